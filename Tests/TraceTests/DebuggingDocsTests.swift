import Foundation
import Testing

/// docs/debugging.md and docs/examples/: the files parse, the sysmirror commands they show take the flags
/// they give, and the wrappers run their debugger or runtime under trace against a real agent.
struct DebuggingDocsTests {
    static let examples = Fixtures.packageRoot.appendingPathComponent("docs/examples")
    static let wrappers = ["sysmirror-dlv", "sysmirror-python", "sysmirror-node", "sysmirror-gdb"]

    @Test("The VS Code files parse as JSON with comments, and name wrappers that exist")
    func vscodeFiles() throws {
        for name in ["launch.json", "settings.json"] {
            let text = try String(
                contentsOf: Self.examples.appendingPathComponent("vscode/\(name)"), encoding: .utf8)
            #expect(throws: Never.self, "\(name)") {
                try JSONSerialization.jsonObject(with: Data(Self.withoutComments(text).utf8))
            }
            for path in text.components(separatedBy: "${workspaceFolder}/.vscode/").dropFirst() {
                let wrapper = String(path.prefix { $0 != "\"" })
                #expect(Self.wrappers.contains(wrapper), "\(name) names \(wrapper)")
            }
        }
        let launch =
            try JSONSerialization.jsonObject(
                with: Data(
                    Self.withoutComments(
                        try String(
                            contentsOf: Self.examples.appendingPathComponent("vscode/launch.json"), encoding: .utf8)
                    ).utf8)) as? [String: Any]
        let types = (launch?["configurations"] as? [[String: Any]] ?? []).compactMap { $0["type"] as? String }
        #expect(Set(types) == ["go", "debugpy", "node", "cppdbg"])
    }

    @Test("The wrappers are bash that parses", arguments: DebuggingDocsTests.wrappers)
    func wrapperParses(_ name: String) throws {
        let path = Self.examples.appendingPathComponent(name).path
        #expect(FileManager.default.isExecutableFile(atPath: path))
        let checked = try Run.process(["bash", "-n", path], directory: Fixtures.shared.directory)
        #expect(checked.status == 0, "\(checked.stderr)")
    }

    @Test("Every sysmirror command in the page and the examples takes the flags it is shown with")
    func commandsExist() throws {
        var sources = [
            try String(contentsOf: Fixtures.packageRoot.appendingPathComponent("docs/debugging.md"), encoding: .utf8)
        ]
        for name in Self.wrappers + ["vscode/launch.json", "vscode/settings.json", "sysmirror.yaml"] {
            sources.append(try String(contentsOf: Self.examples.appendingPathComponent(name), encoding: .utf8))
        }
        var help: [String: String] = [:]
        var checked = 0
        for source in sources {
            for line in source.split(separator: "\n") {
                guard let start = line.range(of: "sysmirror ") else { continue }
                let words = line[start.upperBound...].split(separator: " ").map(String.init)
                guard let subcommand = words.first, ["trace", "env", "agent", "doctor"].contains(subcommand) else {
                    continue
                }
                if help[subcommand] == nil {
                    help[subcommand] = try Run.process([Fixtures.shared.sysmirror, subcommand, "--help"]).stdout
                }
                // Its own flags: up to `--`, where the program begins.
                for word in words.dropFirst().prefix(while: { $0 != "--" }) where word.hasPrefix("-") {
                    let flag = String(word.prefix { $0 != "=" }).trimmingCharacters(in: CharacterSet(charactersIn: "`"))
                    #expect(help[subcommand]?.contains(flag) == true, "sysmirror \(subcommand) has no \(flag): \(line)")
                    checked += 1
                }
            }
        }
        #expect(checked > 20)
    }

    /// JSON with VS Code's comments (`//` to the end of a line, outside strings) removed.
    static func withoutComments(_ text: String) -> String {
        var result = ""
        var inString = false
        var escaped = false
        var index = text.startIndex
        while index < text.endIndex {
            let character = text[index]
            if inString {
                inString = escaped || character != "\""
                escaped = !escaped && character == "\\"
            } else if character == "\"" {
                inString = true
            } else if character == "/", text[index...].hasPrefix("//") {
                index = text[index...].firstIndex(of: "\n") ?? text.endIndex
                continue
            }
            result.append(character)
            index = text.index(after: index)
        }
        return result
    }
}

/// The example wrappers run as the recipes say, against the pod stand-in's agent: each program reads the
/// pod's token through its wrapper.
@Suite("The debugging examples under trace", .enabled(if: PodStandIn.isAvailable, "needs root for namespaces"))
final class DebuggingExamplesTests {
    let pod: PodStandIn
    let fixtures = Fixtures.shared
    let folder: URL

    init() throws {
        pod = try PodStandIn()
        // Where nobody may read them, with a config naming the stand-in's agent beside them.
        folder = fixtures.directory.appendingPathComponent("examples-\(pod.name)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        for name in DebuggingDocsTests.wrappers + ["sysmirror.yaml"] {
            try FileManager.default.copyItem(
                at: DebuggingDocsTests.examples.appendingPathComponent(name), to: folder.appendingPathComponent(name))
        }
        try "agent:\n  address: unix:\(pod.socket)\n  token_file: \(pod.tokenFile)\n".write(
            to: folder.appendingPathComponent("agent.yaml"), atomically: false, encoding: .utf8)
        for item in try FileManager.default.contentsOfDirectory(atPath: folder.path) {
            chmod(folder.appendingPathComponent(item).path, 0o755)
        }
        chmod(folder.path, 0o755)
    }

    deinit {
        pod.tearDown()
        try? FileManager.default.removeItem(at: folder)
    }

    /// A wrapper run as nobody in the developer's namespace, with the built sysmirror first on PATH.
    func run(_ wrapper: String, _ arguments: [String], config: String = "agent.yaml", stdin: String? = nil) throws
        -> Outcome
    {
        try Run.process(
            [folder.appendingPathComponent(wrapper).path] + arguments,
            environment: [
                "PATH": "\(fixtures.directory.path):/usr/local/bin:/usr/bin:/bin", "HOME": DebugPrograms.shared.home,
                "SYSMIRROR_CONFIG": folder.appendingPathComponent(config).path,
            ], stdin: stdin, unprivileged: true, namespace: pod.developerNamespace)
    }

    static let tokenPath = "/var/run/secrets/kubernetes.io/serviceaccount/token"

    @Test("Each wrapper runs its debugger or runtime under trace")
    func wrappers() throws {
        let python = try run("sysmirror-python", ["-c", "print(open('\(Self.tokenPath)').read())"])
        #expect(python.stdout == "\(DebuggerTests.token)\n", "\(python.stderr)")
        let node = try run(
            "sysmirror-node", ["-e", "console.log(require('fs').readFileSync('\(Self.tokenPath)', 'utf8'))"])
        #expect(node.stdout == "\(DebuggerTests.token)\n", "\(node.stderr)")
        let gdb = try run("sysmirror-gdb", ["-nx", "-batch", "-ex", "shell cat \(Self.tokenPath)"])
        #expect(gdb.stdout == DebuggerTests.token, "\(gdb.stderr)")
        let delve = try run(
            "sysmirror-dlv", ["exec", "--allow-non-terminal-interactive", DebugPrograms.shared.path("debuggee-go")],
            stdin: "continue\nexit\n")
        #expect(delve.stdout.contains("token: \(DebuggerTests.token)\n"), "\(delve.stdout) \(delve.stderr)")
    }

    @Test("The example config is one sysmirror takes")
    func config() throws {
        // The agent flags win over the example's Kubernetes target.
        let outcome = try Run.process(
            [
                fixtures.sysmirror, "env", "--config", folder.appendingPathComponent("sysmirror.yaml").path,
                "--agent", "unix:\(pod.socket)", "--token-file", pod.tokenFile,
            ], unprivileged: true)
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stdout.contains("DB_HOST=db.default.svc.cluster.local"))
    }
}
