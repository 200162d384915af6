import Foundation
import Testing

/// A pod without a cluster (design.md, "Testing without a cluster"): a network namespace for the pod, in
/// it a "container" (busybox sleep, chrooted into its own root with `unshare --root`, with its own UTS
/// namespace, hostname and environment), and a real `sysmirror agent --pid` serving it. Programs run under
/// `sysmirror trace` as nobody in a second namespace that has only loopback, reaching the agent through a
/// unix socket. Needs root (CI runs as root); everything is removed by `tearDown`, also after a failure.
final class PodStandIn: @unchecked Sendable {  // processes are set up before tests use it
    static let hostname = "web-7d9f8b-x2x4q"
    static let environment = [
        "DB_HOST": "db.default.svc.cluster.local", "GREETING": "hello from the pod", "PATH": "/pod/bin",
        "HOME": "/home/pod",
    ]
    static let token = "tests-token-0123456789abcdef"
    static var isAvailable: Bool { getuid() == 0 }

    let name: String
    let podNamespace: String
    let developerNamespace: String
    /// The container's root folder (also the pod's file system as tests see it from outside).
    let root: URL
    let socket: String
    let tokenFile: String
    let agentLog: String
    private(set) var container: Process?
    private(set) var agent: Process?
    private static let counter = Counter()

    init() throws {
        let fixtures = Fixtures.shared
        name = "\(getpid())-\(Self.counter.next())"
        podNamespace = "sysm-pod-\(name)"
        developerNamespace = "sysm-dev-\(name)"
        root = fixtures.directory.appendingPathComponent("pod-\(name)")
        socket = fixtures.path("agent-\(name).sock")
        tokenFile = fixtures.path("token-\(name)")
        agentLog = fixtures.path("agent-\(name).log")
        do {
            try makeRoot()
            try Self.command(["ip", "netns", "add", podNamespace])
            try Self.command(["ip", "netns", "add", developerNamespace])
            try Self.command(["ip", "-n", podNamespace, "link", "set", "lo", "up"])
            try Self.command(["ip", "-n", developerNamespace, "link", "set", "lo", "up"])
            try startContainer()
            try startAgent()
        } catch {
            tearDown()
            throw error
        }
    }

    /// The container's files: a config, a service-account token, a directory, a symlink that tries to
    /// leave the root, and the pod's own /etc.
    private func makeRoot() throws {
        let files = [
            "config/app.yaml": "listen: 8080\nmode: pod\n",
            "var/run/secrets/kubernetes.io/serviceaccount/token": "eyJhbGciOiJSUzI1NiJ9.pod-token",
            "data/a.txt": "alpha\n", "data/b.txt": "bravo bravo\n", "data/nested/c.txt": "charlie\n",
            "etc/hostname": "\(Self.hostname)\n", "etc/shadow": "pod-shadow-file\n",
            "etc/hosts": "127.0.0.1 localhost\n10.96.0.10 web\n",
        ]
        for (path, content) in files {
            let url = root.appendingPathComponent(path)
            try FileManager.default.createDirectory(
                at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try content.write(to: url, atomically: false, encoding: .utf8)
        }
        try FileManager.default.createSymbolicLink(
            atPath: root.appendingPathComponent("config/escape").path, withDestinationPath: "/../../etc/shadow")
        try FileManager.default.createDirectory(
            at: root.appendingPathComponent("bin"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(
            atPath: "/bin/busybox", toPath: root.appendingPathComponent("bin/busybox").path)
        _ = try Fixtures.shared.readableFile("token-\(name)", Self.token)
    }

    private func startContainer() throws {
        let environment = Self.environment.map { "\($0.key)=\($0.value)" }.sorted()
        container = try Self.start(
            ["ip", "netns", "exec", podNamespace, "/usr/bin/env", "-i"] + environment + [
                "/usr/bin/unshare", "--mount", "--uts", "--root=\(root.path)", "/bin/busybox", "sh", "-c",
                "/bin/busybox hostname \(Self.hostname) && exec /bin/busybox sleep 600",
            ], log: nil)
        // Ready once the container runs in its own root.
        try Self.waitUntil("the container to start") {
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(container!.processIdentifier)/root"))
                == root.path
                && (try? String(contentsOfFile: "/proc/\(container!.processIdentifier)/comm", encoding: .utf8))
                    == "busybox\n"
        }
        try Self.waitUntil("the container's hostname") {
            let result = try? Run.process(
                ["nsenter", "-t", "\(container!.processIdentifier)", "--uts", "hostname"], directory: root)
            return result?.stdout == "\(Self.hostname)\n"
        }
    }

    var containerPID: Int32 { container?.processIdentifier ?? 0 }

    /// Starts (or restarts) the agent in the pod's namespace, and hands its socket to the unprivileged user
    /// who runs the traced programs.
    func startAgent(idleTimeout: Int = 120) throws {
        try? FileManager.default.removeItem(atPath: socket)
        agent = try Self.start(
            [
                "ip", "netns", "exec", podNamespace, Fixtures.shared.sysmirror, "agent", "--listen", "unix:\(socket)",
                "--pid", "\(containerPID)", "--token-file", tokenFile, "--idle-timeout", "\(idleTimeout)",
            ], log: agentLog)
        try Self.waitUntil("the agent's socket") { FileManager.default.fileExists(atPath: socket) }
        try Self.command(["chown", "65534:65534", socket])
    }

    /// Kills the agent with SIGKILL, as a crash would.
    func killAgent() {
        guard let agent else { return }
        kill(agent.processIdentifier, SIGKILL)
        agent.waitUntilExit()
    }

    /// `sysmirror trace --agent` as nobody in the developer's namespace; returns the outcome and log lines.
    func trace(
        _ program: [String], options: [String] = [], tokenFile: String? = nil, environment: [String: String] = [:],
        stdin: String? = nil, directory: URL? = nil, timeout: TimeInterval = 60
    ) throws -> (Outcome, [String]) {
        let log = Fixtures.shared.path("trace-\(UUID().uuidString).log")
        defer { try? FileManager.default.removeItem(atPath: log) }
        let outcome = try Run.process(
            [
                Fixtures.shared.sysmirror, "trace", "--log", log, "--agent", "unix:\(socket)", "--token-file",
                tokenFile ?? self.tokenFile,
            ] + options + ["--"] + program,
            environment: environment, stdin: stdin, unprivileged: true, namespace: developerNamespace,
            timeout: timeout)
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        return (outcome, text.split(separator: "\n").map(String.init))
    }

    /// The same program without sysmirror, in the same place: it must not see the pod.
    func direct(_ program: [String]) throws -> Outcome {
        try Run.process(program, unprivileged: true, namespace: developerNamespace)
    }

    var agentLogText: String { (try? String(contentsOfFile: agentLog, encoding: .utf8)) ?? "" }

    func tearDown() {
        for process in [agent, container].compactMap({ $0 }) where process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        for namespace in [podNamespace, developerNamespace] {
            _ = try? Run.process(["ip", "netns", "delete", namespace], directory: Fixtures.shared.directory)
        }
        for path in [root.path, socket, tokenFile, agentLog] { try? FileManager.default.removeItem(atPath: path) }
    }

    static func command(_ arguments: [String]) throws {
        let result = try Run.process(arguments, directory: Fixtures.shared.directory)
        guard result.status == 0 else {
            throw FixtureError(description: "\(arguments.joined(separator: " ")) failed: \(result.stderr)")
        }
    }

    /// Starts a long-running process; its output goes to `log` (or nowhere).
    static func start(_ arguments: [String], log: String?) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [Fixtures.shared.path("unblocked")] + arguments
        process.currentDirectoryURL = Fixtures.shared.directory
        process.standardInput = FileHandle.nullDevice
        if let log {
            FileManager.default.createFile(atPath: log, contents: nil)
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
            process.standardOutput = handle
            process.standardError = handle
        } else {
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
        }
        try process.run()
        return process
    }

    static func waitUntil(_ what: String, timeout: TimeInterval = 10, _ condition: () -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while !condition() {
            guard Date() < deadline else { throw FixtureError(description: "timed out waiting for \(what)") }
            usleep(10_000)
        }
    }

    final class Counter: @unchecked Sendable {
        private var value = 0
        private let lock = NSLock()
        func next() -> Int {
            lock.withLock {
                value += 1; return value
            }
        }
    }
}
