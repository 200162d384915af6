import Foundation
import Testing

/// `sysmirror env` against real agents: the pod stand-in's, and one serving a process whose environment
/// holds the values a dotenv file gets wrong, read back with python-dotenv.
@Suite("sysmirror env", .enabled(if: PodStandIn.isAvailable, "needs root for namespaces"))
final class EnvCommandTests {
    let pod: PodStandIn
    let fixtures = Fixtures.shared

    init() throws { pod = try PodStandIn() }
    deinit { pod.tearDown() }

    /// `sysmirror env --agent ... OPTIONS` as nobody.
    func env(_ options: [String], agent: String? = nil, tokenFile: String? = nil) throws -> Outcome {
        try Run.process(
            [
                fixtures.sysmirror, "env", "--agent", agent ?? "unix:\(pod.socket)", "--token-file",
                tokenFile ?? pod.tokenFile,
            ] + options, unprivileged: true)
    }

    @Test("The pod's variables trace takes, as a dotenv file and as JSON, never the local set")
    func formats() throws {
        let dotenv = try env([])
        #expect(dotenv.status == 0, "\(dotenv.stderr)")
        #expect(Self.lines(dotenv.stdout) == ["DB_HOST=db.default.svc.cluster.local", "GREETING='hello from the pod'"])

        let json = try env(["--format", "json"])
        #expect(json.status == 0, "\(json.stderr)")
        let object = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: String]
        #expect(object == ["DB_HOST": "db.default.svc.cluster.local", "GREETING": "hello from the pod"])
        // PATH and HOME are the pod's too, but trace keeps the local ones.
        #expect(PodStandIn.environment["PATH"] != nil && object?["PATH"] == nil && object?["HOME"] == nil)
    }

    @Test("--env-include, --env-exclude and the config file's env select as they do for trace")
    func selection() throws {
        #expect(try env(["--env-exclude", "GREET*"]).stdout == "DB_HOST=db.default.svc.cluster.local\n")
        #expect(try env(["--env-include", "GREET*"]).stdout == "GREETING='hello from the pod'\n")
        let config = try fixtures.readableFile("env-config-\(pod.name).yaml", "env:\n  exclude: [DB_*]\n")
        defer { try? FileManager.default.removeItem(atPath: config) }
        #expect(try env(["--config", config]).stdout == "GREETING='hello from the pod'\n")
        let off = try fixtures.readableFile("env-off-\(pod.name).yaml", "env:\n  remote: false\n")
        defer { try? FileManager.default.removeItem(atPath: off) }
        let none = try env(["--config", off])
        #expect(none.status == 0 && none.stdout.isEmpty, "\(none.stderr)")
        #expect(none.stderr.contains("env.remote is false"))
    }

    @Test("-o FILE writes the file 0600, for a run configuration's env file")
    func outputFile() throws {
        let file = fixtures.path("pod-\(pod.name).env")
        defer { try? FileManager.default.removeItem(atPath: file) }
        let outcome = try env(["-o", file, "--format", "env"])
        #expect(outcome.status == 0 && outcome.stdout.isEmpty, "\(outcome.stderr)")
        #expect(
            Self.lines(try String(contentsOfFile: file, encoding: .utf8)) == [
                "DB_HOST=db.default.svc.cluster.local", "GREETING='hello from the pod'",
            ])
        #expect((try FileManager.default.attributesOfItem(atPath: file)[.posixPermissions] as? Int) == 0o600)
        let unwritable = try env(["-o", "/proc/nope/pod.env"])
        #expect(unwritable.status == 1)
        #expect(unwritable.stderr.contains("cannot write /proc/nope/pod.env"), "\(unwritable.stderr)")
        #expect(!unwritable.stderr.contains("Usage"))
    }

    @Test("Without an agent, with a targetless one, or with a wrong token: an error and nothing written")
    func failures() throws {
        let noAgent = try Run.process([fixtures.sysmirror, "env"], unprivileged: true)
        #expect(noAgent.status == 64 && noAgent.stderr.contains("add --target KIND/NAME or --agent"))
        let targetless = try Run.process([fixtures.sysmirror, "env", "--target", "targetless"], unprivileged: true)
        #expect(targetless.status == 64 && targetless.stderr.contains("targetless"), "\(targetless.stderr)")
        let both = try Run.process(
            [fixtures.sysmirror, "env", "--target", "pod/x", "--agent", "unix:/x"], unprivileged: true)
        #expect(both.status == 64 && both.stderr.contains("--agent and --target"))
        let wrong = try fixtures.readableFile("env-wrong-token-\(pod.name)", "not the token")
        defer { try? FileManager.default.removeItem(atPath: wrong) }
        let refused = try env([], tokenFile: wrong)
        #expect(refused.status == 1 && refused.stdout.isEmpty)
        #expect(refused.stderr.contains("refused the session: wrong token"), "\(refused.stderr)")
    }

    /// Values with spaces, quotes, newlines, `$` and `#`.
    static let awkward = [
        "SPACES": "two  words ", "SINGLE": "it's", "DOUBLE": #"say "hi""#, "NEWLINES": "line one\nline two\n",
        "DOLLARS": "$HOME ${HOME} $(id) $$", "HASH": "a #comment", "LEADING_HASH": "#start",
        "BACKSLASHES": #"C:\path\ \' \\ \n end"#, "EMPTY": "", "UNICODE": "é 日本", "EQUALS": "a=b==",
        "URL": "postgres://user:p@ss@db:5432/app?sslmode=require",
    ]
    /// What the dotenv file leaves out: a name of another dialect, and a value ending with a backslash.
    static let leftOut = ["not-portable.name": "x", "TRAILING": #"C:\dir\"#]

    @Test("Awkward values round-trip through python-dotenv and JSON")
    func roundTrip() throws {
        // A process with those variables, and an agent serving it.
        let variables = Self.awkward.merging(Self.leftOut) { $1 }.map { "\($0.key)=\($0.value)" }
        let target = try PodStandIn.start(["/usr/bin/env", "-i"] + variables + ["/bin/sleep", "60"], log: nil)
        let socket = fixtures.path("env-agent-\(pod.name).sock")
        let agent = try PodStandIn.start(
            [
                fixtures.sysmirror, "agent", "--listen", "unix:\(socket)", "--pid", "\(target.processIdentifier)",
                "--token-file", pod.tokenFile,
            ], log: nil)
        defer {
            for process in [agent, target] {
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
            }
            try? FileManager.default.removeItem(atPath: socket)
        }
        try PodStandIn.waitUntil("the agent's socket") { FileManager.default.fileExists(atPath: socket) }
        try PodStandIn.command(["chown", "65534:65534", socket])

        let file = fixtures.path("awkward-\(pod.name).env")
        defer { try? FileManager.default.removeItem(atPath: file) }
        let written = try env(["-o", file], agent: "unix:\(socket)")
        #expect(written.status == 0)
        #expect(written.stderr.contains("left out of the dotenv file"), "\(written.stderr)")
        #expect(written.stderr.contains("not-portable.name") && written.stderr.contains("TRAILING"))
        // python-dotenv expands ${NAME} in any value unless told not to.
        let read = try Run.process(
            [
                "/usr/bin/python3", "-c",
                "import dotenv, json, sys; print(json.dumps(dotenv.dotenv_values(sys.argv[1], interpolate=False)))",
                file,
            ], unprivileged: true)
        #expect(read.status == 0, "\(read.stderr)")
        let parsed = try JSONSerialization.jsonObject(with: Data(read.stdout.utf8)) as? [String: String]
        let text = try String(contentsOfFile: file, encoding: .utf8)
        #expect(parsed == Self.awkward, "\(text)")

        let json = try env(["--format", "json"], agent: "unix:\(socket)")
        let object = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: String]
        #expect(object == Self.awkward.merging(Self.leftOut) { $1 })
    }

    /// The lines of a dotenv file in any order: the pod's environment has its own.
    static func lines(_ text: String) -> Set<String> { Set(text.split(separator: "\n").map(String.init)) }
}
