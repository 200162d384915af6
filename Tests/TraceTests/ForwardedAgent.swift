import Foundation

/// An agent on TCP in a pod stand-in, reached as through `kubectl port-forward`: the port-forward stand-in
/// of bench/Sources (two socat hops, tcp → unix → tcp, each listening with a backlog of 1,024), or with
/// `delayMilliseconds`, a developer's hop that holds every chunk that long each way and sets up each new
/// connection in two round trips, as kubectl does (Tests/Fixtures/delaying-forward). The agent listens on
/// 127.0.0.1:7000 in the pod's namespace; the trace reaches it at `address`, 127.0.0.1:7001 in the
/// developer's. `cut` ends the developer's hop and every connection through it, as a port-forward that
/// drops; `restore` starts it again on the same port, as sysmirror's restart of one does.
final class ForwardedAgent {
    let pod: PodStandIn
    let address = "127.0.0.1:7001"
    private let relay: String
    private let agent: Process
    private var podHop: SpawnedService?
    private var developerHop: SpawnedService?
    private let delayMilliseconds: Int?
    /// Made for this agent (`init(podWithNetwork:)`): torn down with it.
    private var ownsPod = false

    /// In a pod stand-in of its own (with the pod's services: `network`), which `stop` tears down too.
    convenience init(podWithNetwork network: Bool, delayMilliseconds: Int? = nil) throws {
        let pod = try PodStandIn(network: network)
        do {
            try self.init(in: pod, delayMilliseconds: delayMilliseconds)
        } catch {
            pod.tearDown()
            throw error
        }
        ownsPod = true
    }

    init(in pod: PodStandIn, delayMilliseconds: Int? = nil) throws {
        self.pod = pod
        self.delayMilliseconds = delayMilliseconds
        relay = Fixtures.shared.path("forward-\(pod.name).sock")
        agent = try PodStandIn.start(
            [
                "ip", "netns", "exec", pod.podNamespace, Fixtures.shared.sysmirror, "agent", "--listen",
                "127.0.0.1:7000", "--pid", "\(pod.containerPID)", "--token-file", pod.tokenFile, "--idle-timeout",
                "600", "--quiet",
            ], log: nil)
        do {
            podHop = try SpawnedService([
                "ip", "netns", "exec", pod.podNamespace, "socat", "UNIX-LISTEN:\(relay),fork,backlog=1024",
                "TCP:127.0.0.1:7000,nodelay",
            ])
            try restore()
            try PodStandIn.waitUntil("the agent on TCP") { Self.listening(pod.podNamespace, port: 7000) }
        } catch {
            stop()
            throw error
        }
    }

    /// The developer's hop, listening again on 127.0.0.1:7001.
    func restore() throws {
        let inDeveloper = ["ip", "netns", "exec", pod.developerNamespace]
        if let delayMilliseconds {
            let script = Fixtures.packageRoot.appendingPathComponent(
                "Tests/Fixtures/delaying-forward/delaying_forward.py")
            developerHop = try SpawnedService(
                inDeveloper + [
                    "python3", script.path, "--listen", "127.0.0.1:7001", "--connect", "unix:\(relay)", "--delay-ms",
                    "\(delayMilliseconds)",
                ], ownGroup: true)
        } else {
            developerHop = try SpawnedService(
                inDeveloper + [
                    "socat", "TCP-LISTEN:7001,bind=127.0.0.1,fork,backlog=1024,reuseaddr,nodelay",
                    "UNIX-CONNECT:\(relay)",
                ], ownGroup: true)
        }
        try PodStandIn.waitUntil("the port-forward stand-in") {
            Self.listening(pod.developerNamespace, port: 7001) && FileManager.default.fileExists(atPath: relay)
        }
    }

    /// The developer's hop ends, with every connection through it (socat serves each in a child of its own).
    func cut() {
        guard let hop = developerHop else { return }
        developerHop = nil
        // The whole group, and gone before this returns: a relay forked while the listener was being killed
        // would keep the listening socket (and a connection) alive, and one still running on the other CPU
        // could carry one more request.
        hop.stopGroup()
    }

    func stop() {
        cut()
        podHop?.stop()
        podHop = nil
        if agent.isRunning {
            kill(agent.processIdentifier, SIGKILL)
            agent.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: relay)
        if ownsPod { pod.tearDown() }
    }

    static func listening(_ namespace: String, port: Int) -> Bool {
        let tcp = (try? Run.process(["ip", "netns", "exec", namespace, "cat", "/proc/net/tcp"]).stdout) ?? ""
        return tcp.contains("0100007F:\(String(format: "%04X", port)) 00000000:0000 0A")
    }
}
