import Foundation

/// The developer's servers of a test: static Go HTTP servers (or any program) traced as nobody in the pod
/// stand-in's developer namespace, each until the test ends it.
final class TracedServers {
    let pod: PodStandIn
    private var running: [Server] = []

    init(pod: PodStandIn) { self.pod = pod }

    /// A traced local server, once the pod's port is its (or refused): its output file and trace log.
    struct Server {
        let process: Process
        let output: String
        let log: String
        var outputText: String { (try? String(contentsOfFile: output, encoding: .utf8)) ?? "" }
        var logText: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
        /// The requests the server printed (path and X-Dev), one a line.
        var requests: String {
            outputText.split(separator: "\n").filter { $0.hasPrefix("/") }.map { $0 + "\n" }.joined()
        }
        /// The server's own pid, from its listen in the log.
        var programPID: Int32? {
            logText.split(separator: "\n").first { $0.contains("] listen(") }.flatMap {
                Int32($0.dropFirst("[pid ".count).prefix { $0 != "]" })
            }
        }
    }

    /// `gofixture serve NAME 127.0.0.1:PORT` (answering "NAME CLIENT-IP"), or `program`, under `sysmirror
    /// trace OPTIONS` through `agent` (the pod's own agent unless given), once it listens.
    func start(
        _ options: [String], port: Int = 8080, name: String = "local", program: [String]? = nil, agent: String? = nil
    ) throws -> Server {
        let fixtures = Fixtures.shared
        let file = UUID().uuidString
        let server = Server(
            process: try pod.startTrace(
                program ?? [fixtures.path("gofixture"), "serve", name, "127.0.0.1:\(port)"], options: options,
                output: fixtures.path("local-\(file).out"), log: fixtures.path("local-\(file).log"),
                agentAddress: agent),
            output: fixtures.path("local-\(file).out"), log: fixtures.path("local-\(file).log"))
        running.append(server)
        // The call's own line: a Python program's execve line shows its script, listen( included.
        try PodStandIn.waitUntil("the local server's listen") {
            server.logText.contains("] listen(") || !server.process.isRunning
        }
        return server
    }

    /// Sends `signal` to sysmirror and waits for it; after 10 s, or when sysmirror is killed and its program
    /// left behind, the program is killed too (Foundation waits for every process holding the output).
    func end(_ server: Server, with signal: Int32 = SIGTERM) {
        guard running.contains(where: { $0.process === server.process }) else { return }
        running.removeAll { $0.process === server.process }
        kill(server.process.processIdentifier, signal)
        // Killed, sysmirror leaves its program behind, and Foundation waits for it (it holds the output).
        if signal == SIGKILL, let program = server.programPID { kill(program, SIGKILL) }
        let deadline = Date().addingTimeInterval(10)
        while server.process.isRunning && Date() < deadline { usleep(10_000) }
        if server.process.isRunning, let program = server.programPID { kill(program, SIGKILL) }
        if server.process.isRunning { kill(server.process.processIdentifier, SIGKILL) }
        server.process.waitUntilExit()
    }

    func endAll() {
        for server in running { end(server, with: SIGKILL) }
    }
}
