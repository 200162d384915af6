import Foundation
import Testing

/// The built `sysmirror` and the test programs, copied into a world-readable folder so that an unprivileged
/// user can run them (CI's checkout may sit where that user cannot go).
final class Fixtures: Sendable {
    /// Built once per test run, on first use.
    static let shared: Fixtures = {
        do {
            return try Fixtures()
        } catch {
            fatalError("could not build the test fixtures: \(error)")
        }
    }()

    let directory: URL
    let sysmirror: String

    private init() throws {
        directory = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent(
            "sysmirror-tests-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        chmod(directory.path, 0o1777)  // like /tmp: the unprivileged user writes its logs here
        sysmirror = directory.appendingPathComponent("sysmirror").path
        Self.folderToRemove = directory.path
        atexit {
            if let folder = Fixtures.folderToRemove { try? FileManager.default.removeItem(atPath: folder) }
        }
        try FileManager.default.copyItem(atPath: Self.builtBinary(), toPath: sysmirror)

        let sources = Self.packageRoot.appendingPathComponent("Tests/Fixtures")
        for name in ["unblocked", "static-reader", "forker", "signals", "network", "pages", "abi", "survivor"] {
            try Self.check(
                [
                    "gcc", "-O2", "-static", "-pthread", "-Wall", "-o", path(name),
                    sources.appendingPathComponent("\(name).c").path,
                ], in: directory)
        }
        try Self.check(
            [
                "musl-gcc", "-O2", "-static", "-Wall", "-o", path("musl-lookup"),
                sources.appendingPathComponent("musl-lookup.c").path,
            ],
            in: directory)
        try Self.check(
            ["go", "build", "-o", path("gofixture"), "main.go"],
            in: sources.appendingPathComponent("gofixture"),
            environment: ["CGO_ENABLED": "0", "GOCACHE": directory.appendingPathComponent(".gocache").path])
        try "pod file\n".write(to: directory.appendingPathComponent("data.txt"), atomically: true, encoding: .utf8)
        for item in try FileManager.default.contentsOfDirectory(atPath: directory.path) {
            chmod(path(item), item == "data.txt" ? 0o644 : 0o755)
        }
    }

    /// The folder to remove when the test process exits: a static is never deinitialized.
    nonisolated(unsafe) private static var folderToRemove: String?

    func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    /// Writes `content` to `name`, readable by the unprivileged user; returns its path. Parameterized cases run
    /// in parallel and may write the same file: it is written aside and renamed into place, so a reader never
    /// sees it empty or half written.
    func readableFile(_ name: String, _ content: String) throws -> String {
        let file = path(name)
        let aside = file + ".\(UUID().uuidString)"
        try content.write(toFile: aside, atomically: false, encoding: .utf8)
        chmod(aside, 0o644)
        guard rename(aside, file) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        return file
    }

    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    /// `SYSMIRROR_BIN`, or the `sysmirror` SwiftPM built beside the test bundle.
    static func builtBinary() -> String {
        if let explicit = ProcessInfo.processInfo.environment["SYSMIRROR_BIN"] { return explicit }
        let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for candidate in [bundle, bundle.deletingLastPathComponent()] {
            let binary = candidate.appendingPathComponent("sysmirror").path
            if FileManager.default.isExecutableFile(atPath: binary) { return binary }
        }
        return packageRoot.appendingPathComponent(".build/debug/sysmirror").path
    }

    /// Runs a build step. `directory` is explicit: `Fixtures.shared` is not available while it is being built.
    static func check(_ arguments: [String], in directory: URL, environment: [String: String] = [:]) throws {
        let result = try Run.process(arguments, directory: directory, environment: environment)
        guard result.status == 0 else {
            throw FixtureError(description: "\(arguments.joined(separator: " ")) failed: \(result.stderr)")
        }
    }
}

struct FixtureError: Error, CustomStringConvertible {
    let description: String
}

/// What a finished process left behind.
struct Outcome {
    let status: Int32
    let stdout: String
    let stderr: String
}

enum Run {
    /// Runs `arguments` to the end, with signals unblocked (see Fixtures/unblocked.c). With `unprivileged`
    /// and as root, runs them as nobody: the tests must pass without privileges. With `namespace`, runs them
    /// in that network namespace.
    static func process(
        _ arguments: [String], directory: URL? = nil, environment: [String: String] = [:], stdin: String? = nil,
        unprivileged: Bool = false, namespace: String? = nil, timeout: TimeInterval = 60
    ) throws -> Outcome {
        let process = Process()
        var command = arguments
        if unprivileged && getuid() == 0 {
            command =
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--"] + command
        }
        if let namespace { command = ["ip", "netns", "exec", namespace] + command }
        if directory == nil { command = [Fixtures.shared.path("unblocked")] + command }
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = command
        process.currentDirectoryURL = directory ?? Fixtures.shared.directory
        var merged = ProcessInfo.processInfo.environment
        merged["PATH"] = "/usr/local/bin:/usr/bin:/bin"
        merged.merge(environment) { $1 }
        process.environment = merged
        let output = Pipe()
        let errors = Pipe()
        let input = Pipe()
        process.standardOutput = output
        process.standardError = errors
        process.standardInput = input
        try process.run()
        if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
        try input.fileHandleForWriting.close()
        // Read both pipes while the process runs, so a full pipe never stalls it.
        let stdoutData = Box<Data>()
        let stderrData = Box<Data>()
        let group = DispatchGroup()
        for (pipe, box) in [(output, stdoutData), (errors, stderrData)] {
            group.enter()
            DispatchQueue.global().async {
                box.value = pipe.fileHandleForReading.readDataToEndOfFile()
                group.leave()
            }
        }
        // Weak, and the pipes closed here: a cancelled work item is only released at its deadline, and with it
        // the process and its pipes. Hundreds of runs then held ~1,500 descriptors, and Foundation's Process.run
        // over-reads the last entry of a full /proc/self/fd listing (swift-corelibs-foundation#5472): a crash.
        let killer = DispatchWorkItem { [weak process] in process?.terminate() }
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: killer)
        process.waitUntilExit()
        killer.cancel()
        group.wait()
        for handle in [output.fileHandleForReading, errors.fileHandleForReading] { try? handle.close() }
        let status =
            process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
        return Outcome(
            status: status, stdout: String(decoding: stdoutData.value ?? Data(), as: UTF8.self),
            stderr: String(decoding: stderrData.value ?? Data(), as: UTF8.self))
    }

    /// `sysmirror trace [options] -- program...` as nobody, with the log in a file; returns the log's lines.
    static func trace(
        _ program: [String], options: [String] = [], stdin: String? = nil, timeout: TimeInterval = 60
    ) throws -> (Outcome, [String]) {
        let fixtures = Fixtures.shared
        let log = fixtures.path("trace-\(UUID().uuidString).log")
        let outcome = try process(
            [fixtures.sysmirror, "trace", "--log", log] + options + ["--"] + program, stdin: stdin,
            unprivileged: true, timeout: timeout)
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        try? FileManager.default.removeItem(atPath: log)
        return (outcome, text.split(separator: "\n").map(String.init))
    }
}

final class Box<Value>: @unchecked Sendable {
    var value: Value?
}
