import Foundation
import Testing

/// Debuggers under `sysmirror trace`, driven through the protocols editors use, against the pod stand-in
/// with a real agent: each stops a program (Tests/Fixtures/debuggee) just after it read the pod's token,
/// reads the variable through the debugger, lets it go on, and checks what the program printed and its
/// exit status. The token exists only in the pod, so each value proves the read was served from there.
@Suite("Debuggers under trace", .enabled(if: PodStandIn.isAvailable, "needs root for namespaces"))
final class DebuggerTests {
    let pod: PodStandIn
    let programs = DebugPrograms.shared
    static let token = "eyJhbGciOiJSUzI1NiJ9.pod-token"
    /// Where debuggers listen, on the developer namespace's loopback (each test has its own namespace).
    static let port: UInt16 = 4711

    init() throws { pod = try PodStandIn() }
    deinit { pod.tearDown() }

    @Test("delve over DAP (dlv dap, as VS Code's Go extension and GoLand drive it) stops after the pod's token is read")
    func delveDAP() throws {
        let session = try TracedSession(
            pod: pod, ["dlv", "dap", "--listen", "127.0.0.1:\(Self.port)"], home: programs.home)
        let dap = DAPClient(try LoopbackConnection(port: Self.port, namespace: pod.developerNamespace))
        try dap.request("initialize", ["adapterID": "go", "linesStartAt1": true, "pathFormat": "path"])
        try dap.request("launch", ["mode": "exec", "program": programs.path("debuggee-go")])
        _ = try dap.event("initialized")
        let line = programs.breakLine("main.go")
        let set = try dap.request(
            "setBreakpoints", ["source": ["path": programs.path("main.go")], "breakpoints": [["line": line]]])
        #expect((set["breakpoints"] as? [[String: Any]])?.first?["verified"] as? Bool == true, "\(set)")
        try dap.request("configurationDone")
        let stopped = try dap.event("stopped")
        let (value, stoppedAt) = try dap.local("token", thread: stopped["threadId"] as? Int ?? 1)
        #expect(value == "\"\(Self.token)\"")
        #expect(stoppedAt == line)
        try dap.request("continue", ["threadId": stopped["threadId"] as? Int ?? 1])
        _ = try dap.event("terminated")
        try dap.request("disconnect")
        // delve 1.20 tells the exit status in a console message, at the disconnect.
        #expect(
            dap.received.contains {
                (($0["body"] as? [String: Any])?["output"] as? String)?.contains("exited with status 7") == true
            }, "\(dap.received)")
        let outcome = session.finish()
        #expect(outcome.stdout.contains("token: \(Self.token)\n"), "\(outcome.stderr)")
        #expect(outcome.status == 0, "\(outcome.stderr)")
    }

    @Test("delve's own command line (dlv exec), fed on its input")
    func delveTerminal() throws {
        let line = programs.breakLine("main.go")
        let session = try TracedSession(
            pod: pod, ["dlv", "exec", "--allow-non-terminal-interactive", programs.path("debuggee-go")],
            home: programs.home)
        try session.send(Array("break \(programs.path("main.go")):\(line)\ncontinue\nprint token\n".utf8))
        _ = try session.waitForOutput(containing: "\"\(Self.token)\"")
        try session.send(Array("continue\nexit\n".utf8))
        let outcome = session.finish()
        #expect(outcome.stdout.contains("token: \(Self.token)\n"), "\(outcome.stdout) \(outcome.stderr)")
        #expect(
            outcome.stderr.contains("Process ") && outcome.stderr.contains("has exited with status 7"),
            "\(outcome.stderr)")
        #expect(outcome.status == 0, "\(outcome.stderr)")
    }

    @Test("debugpy's adapter over DAP on its standard input and output, as VS Code's Python extension runs it")
    func debugpy() throws {
        let session = try TracedSession(pod: pod, ["/usr/bin/python3", "-m", "debugpy.adapter"], home: programs.home)
        let dap = DAPClient(session)
        try dap.request("initialize", ["adapterID": "debugpy", "linesStartAt1": true, "pathFormat": "path"])
        // debugpy answers the launch once the configuration is done.
        let launch = try dap.send(
            "launch", ["program": programs.path("debuggee.py"), "console": "internalConsole", "justMyCode": true])
        _ = try dap.event("initialized")
        let line = programs.breakLine("debuggee.py")
        try dap.request(
            "setBreakpoints", ["source": ["path": programs.path("debuggee.py")], "breakpoints": [["line": line]]])
        try dap.request("configurationDone")
        #expect(try dap.response(to: launch)["success"] as? Bool == true)
        let stopped = try dap.event("stopped")
        let (value, stoppedAt) = try dap.local("token", thread: stopped["threadId"] as? Int ?? 1)
        #expect(value == "'\(Self.token)'")
        #expect(stoppedAt == line)
        try dap.request("continue", ["threadId": stopped["threadId"] as? Int ?? 1])
        #expect(try dap.event("exited")["exitCode"] as? Int == 7)
        _ = try dap.event("terminated")
        #expect(dap.programOutput == "token: \(Self.token)\n")
        _ = try? dap.request("disconnect")
        let outcome = session.finish()
        #expect(outcome.status == 0, "\(outcome.stderr)")
    }

    @Test("gdb in batch mode prints the token at the breakpoint, and the program goes on")
    func gdbBatch() throws {
        let session = try TracedSession(
            pod: pod,
            [
                "gdb", "-nx", "-batch", "-iex", "set debuginfod enabled off", "-ex",
                "break debuggee.c:\(programs.breakLine("debuggee.c"))", "-ex", "run", "-ex",
                #"printf "gdb sees: %s\n", token"#, "-ex", "continue", programs.path("debuggee-c"),
            ], home: programs.home)
        let outcome = session.finish()
        #expect(outcome.stdout.contains("gdb sees: \(Self.token)\n"), "\(outcome.stdout) \(outcome.stderr)")
        #expect(outcome.stdout.contains("token: \(Self.token)\n"))
        #expect(outcome.stdout.contains("exited with code 07"))
    }

    @Test("gdb at a terminal: its prompt works, and Ctrl-C interrupts the program, not sysmirror")
    func gdbInteractive() throws {
        let session = try TracedSession(
            pod: pod,
            ["gdb", "-nx", "-q", "-iex", "set debuginfod enabled off", "--args", programs.path("debuggee-c"), "wait"],
            home: programs.home, terminal: true)
        try session.send(Array("run\n".utf8))
        _ = try session.waitForOutput(containing: "ready ")
        try session.send([3])
        _ = try session.waitForOutput(containing: "received signal SIGINT")
        try session.send(Array(#"printf "gdb sees: %s\n", token"#.utf8) + [10])
        _ = try session.waitForOutput(containing: "gdb sees: \(Self.token)")
        // The program goes on from the interrupted read, and ends when its line comes.
        try session.send(Array("continue\n".utf8))
        try session.send([10])
        let end = try session.waitForOutput(containing: "exited with code 07")
        #expect(end.contains("token: \(Self.token)"))
        try session.send(Array("quit\n".utf8))
        let outcome = session.finish()
        #expect(outcome.status == 0, "\(outcome.stdout) \(outcome.stderr)")
    }

    @Test("gdb/MI (as CLion and VS Code's C/C++ extension drive it): break, run, evaluate, continue")
    func gdbMI() throws {
        let session = try TracedSession(
            pod: pod,
            [
                "gdb", "-nx", "-q", "--interpreter=mi3", "-iex", "set debuginfod enabled off",
                programs.path("debuggee-c"),
            ],
            home: programs.home)
        let mi = MIClient(session)
        let line = programs.breakLine("debuggee.c")
        try mi.command("-break-insert debuggee.c:\(line)")
        try mi.command("-exec-run")
        let stopped = try mi.record("*stopped")
        #expect(MIClient.field("reason", in: stopped) == "breakpoint-hit", "\(stopped)")
        #expect(MIClient.field("line", in: stopped) == "\(line)")
        let value = MIClient.field("value", in: try mi.command("-data-evaluate-expression (char*)token"))
        #expect(value?.hasSuffix("\"\(Self.token)\"") == true, "\(value ?? "")")
        try mi.command("-exec-continue")
        let exited = try mi.record("*stopped")
        #expect(MIClient.field("exit-code", in: exited) == "07", "\(exited)")
        #expect(mi.lines.contains("token: \(Self.token)"))
        _ = try? mi.command("-gdb-exit")
        #expect(session.finish().status == 0)
    }

    @Test("node --inspect-brk over the inspector protocol: paused at the breakpoint, evaluated, resumed")
    func nodeInspector() throws {
        let session = try TracedSession(
            pod: pod, ["node", "--inspect-brk=127.0.0.1:\(Self.port)", programs.path("debuggee.js")],
            home: programs.home)
        let inspector = try InspectorClient(port: Self.port, namespace: pod.developerNamespace)
        try inspector.call("Runtime.enable")
        try inspector.call("Debugger.enable")
        let line = programs.breakLine("debuggee.js")
        try inspector.call("Debugger.setBreakpointByUrl", ["lineNumber": line - 1, "urlRegex": "debuggee\\.js$"])
        try inspector.call("Runtime.runIfWaitingForDebugger")
        // --inspect-brk stops before the first line; then the breakpoint.
        var paused = try inspector.event("Debugger.paused")
        while (paused["hitBreakpoints"] as? [String] ?? []).isEmpty {
            try inspector.call("Debugger.resume")
            paused = try inspector.event("Debugger.paused")
        }
        let frame = try #require((paused["callFrames"] as? [[String: Any]])?.first)
        #expect((frame["location"] as? [String: Any])?["lineNumber"] as? Int == line - 1)
        let result = try inspector.call(
            "Debugger.evaluateOnCallFrame",
            ["callFrameId": frame["callFrameId"] as? String ?? "", "expression": "token"])
        #expect((result["result"] as? [String: Any])?["value"] as? String == Self.token)
        try inspector.call("Debugger.resume")
        // As editors do, the client stays until the program's context ends: node 20 itself crashes now and
        // then (2 in 100 runs, untraced) when its debugger leaves right after a resume.
        _ = try inspector.event("Runtime.executionContextDestroyed")
        inspector.close()
        let outcome = session.finish()
        #expect(outcome.stdout == "token: \(Self.token)\n", "\(outcome.stderr)")
        #expect(outcome.status == 7, "\(outcome.stderr)")
    }

    @Test(
        "gdb -p, started outside sysmirror, attaches to a program traced with --allow-attach, reads the token and detaches"
    )
    func gdbAttach() throws {
        // --allow-attach: what Yama's ptrace_scope 1 needs; this machine has no Yama, so here it must only
        // leave the program as it was.
        let session = try TracedSession(
            pod: pod, [programs.path("debuggee-c"), "wait"], options: ["--allow-attach"], home: programs.home)
        let pid = try Self.readyPID(session)
        // In the program's mount namespace: `ip netns exec` gives each command one of its own, and gdb would
        // try to enter the program's to read its executable, which takes privileges.
        let gdb = try Run.process(
            [
                "nsenter", "--target", "\(pid)", "--mount", "--net", "setpriv", "--reuid=65534", "--regid=65534",
                "--clear-groups", "--inh-caps=-all", "--", "gdb", "-nx", "-batch", "-iex", "set debuginfod enabled off",
                "-p", "\(pid)", "-ex",
                #"printf "attached: %s\n", token"#, "-ex", "detach",
            ])
        #expect(gdb.stdout.contains("attached: \(Self.token)\n"), "\(gdb.stdout) \(gdb.stderr)")
        try session.send([10])
        let outcome = session.finish()
        #expect(outcome.stdout == "ready \(pid)\ntoken: \(Self.token)\n", "\(outcome.stderr)")
        #expect(outcome.status == 7)
    }

    @Test("delve attaches over DAP (as VS Code's Go extension's attach does) to a traced Go program")
    func delveAttach() throws {
        let session = try TracedSession(pod: pod, [programs.path("debuggee-go"), "wait"], home: programs.home)
        let pid = try Self.readyPID(session)
        let delve = try PodStandIn.start(
            [
                "nsenter", "--target", "\(pid)", "--mount", "--net", "setpriv", "--reuid=65534", "--regid=65534",
                "--clear-groups", "--inh-caps=-all", "--", "env", "HOME=\(programs.home)", "dlv", "dap", "--listen",
                "127.0.0.1:\(Self.port)",
            ], log: programs.path("dlv-attach-\(pod.name).log"))
        defer {
            if delve.isRunning { kill(delve.processIdentifier, SIGKILL) }
            delve.waitUntilExit()
        }
        let dap = DAPClient(try LoopbackConnection(port: Self.port, namespace: pod.developerNamespace))
        try dap.request("initialize", ["adapterID": "go", "linesStartAt1": true, "pathFormat": "path"])
        try dap.request("attach", ["mode": "local", "processId": pid])
        _ = try dap.event("initialized")
        let line = programs.breakLine("main.go")
        try dap.request(
            "setBreakpoints", ["source": ["path": programs.path("main.go")], "breakpoints": [["line": line]]])
        try dap.request("configurationDone")
        try session.send([10])
        let stopped = try dap.event("stopped")
        let (value, _) = try dap.local("token", thread: stopped["threadId"] as? Int ?? 1)
        #expect(value == "\"\(Self.token)\"")
        try dap.request("continue", ["threadId": stopped["threadId"] as? Int ?? 1])
        _ = try dap.event("terminated")
        _ = try? dap.request("disconnect")
        let outcome = session.finish()
        #expect(outcome.stdout == "ready \(pid)\ntoken: \(Self.token)\n", "\(outcome.stderr)")
        #expect(outcome.status == 7)
    }

    /// The pid a `wait` debuggee printed once it had read the token.
    static func readyPID(_ session: TracedSession) throws -> Int32 {
        let output = try session.waitForOutput(containing: "\n")
        let words = output.split(separator: "\n").first?.split(separator: " ") ?? []
        guard words.count == 2, words[0] == "ready", let pid = Int32(words[1]) else {
            throw ProtocolError("not ready: \(output)")
        }
        return pid
    }
}

/// The debuggees, copied beside the other fixtures and built for debugging (no optimization, so that
/// every variable is where the debugger looks), and a home folder the debuggers may write.
final class DebugPrograms: Sendable {
    static let shared: DebugPrograms = {
        do {
            return try DebugPrograms()
        } catch {
            fatalError("could not build the debuggees: \(error)")
        }
    }()

    let directory: URL
    let home: String

    private init() throws {
        let fixtures = Fixtures.shared
        directory = fixtures.directory.appendingPathComponent("debuggee")
        home = fixtures.path("debugger-home")
        for folder in [directory.path, home] {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        }
        chmod(home, 0o1777)
        let sources = Fixtures.packageRoot.appendingPathComponent("Tests/Fixtures/debuggee")
        for name in ["main.go", "debuggee.c", "debuggee.py", "debuggee.js"] {
            try FileManager.default.copyItem(
                at: sources.appendingPathComponent(name), to: directory.appendingPathComponent(name))
        }
        try Fixtures.check(
            ["go", "build", "-gcflags=all=-N -l", "-o", "debuggee-go", "main.go"], in: directory,
            environment: ["CGO_ENABLED": "0", "GOCACHE": fixtures.path(".gocache")])
        try Fixtures.check(["gcc", "-g", "-O0", "-o", "debuggee-c", "debuggee.c"], in: directory)
        for item in try FileManager.default.contentsOfDirectory(atPath: directory.path) {
            chmod(path(item), 0o755)
        }
        chmod(directory.path, 0o755)
    }

    func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    /// The line that ends with "break here" in `file`.
    func breakLine(_ file: String) -> Int {
        let text = (try? String(contentsOfFile: path(file), encoding: .utf8)) ?? ""
        return
            (text.split(separator: "\n", omittingEmptySubsequences: false).firstIndex { $0.hasSuffix("break here") }
            ?? -1) + 1
    }
}
