import LinuxSystem
import Logging
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The session's `kubectl port-forward` to the agent, kept up. kubectl (1.31 and later) ends a whole
/// port-forward at the first stream the pod refuses (an agent that listens a little after its container
/// runs), and a port-forward also ends at the kubelet's stream idle timeout or when the API server drops
/// it. It is started again on the same local port, so the link's address stays what it was and the link
/// comes back (`AgentClient.Resumption`).
final class PortForward: Sendable {
    let pod: String
    let agentPort: UInt16
    /// The port-forward's end on this machine, the same across restarts.
    let localPort: UInt16
    private let kubectl: Kubectl
    private let current: Mutex<HelperProcess>
    private let stopping = Atomic<Bool>(false)
    /// Waits between restarts, the last one repeated: a pod that refuses for long is not hammered.
    static let backOff: [UInt32] = [0, 200, 500, 1_000, 2_000, 5_000]

    private init(pod: String, agentPort: UInt16, localPort: UInt16, kubectl: Kubectl, process: HelperProcess) {
        self.pod = pod
        self.agentPort = agentPort
        self.localPort = localPort
        self.kubectl = kubectl
        current = Mutex(process)
    }

    /// `kubectl port-forward pod/POD :PORT`, once it forwards.
    static func start(kubectl: Kubectl, pod: String, port: UInt16) throws(KubernetesFailure) -> PortForward {
        let (process, localPort) = try kubectl.portForward(pod: pod, port: port)
        return PortForward(pod: pod, agentPort: port, localPort: localPort, kubectl: kubectl, process: process)
    }

    var pid: Int32 { current.withLock { $0.pid } }

    var hasExited: Bool { current.withLock { $0.hasExited } }

    /// What the last port-forward wrote to standard error, when it has ended.
    func errors() -> String { String(decoding: current.withLock { $0.availableErrors() }, as: UTF8.self) }

    /// A new port-forward on the same local port, once it forwards (the old one has ended).
    func restart() throws(KubernetesFailure) {
        let (process, _) = try kubectl.portForward(pod: pod, port: agentPort, localPort: localPort)
        let late = current.withLock { running -> Bool in
            if stopping.load(ordering: .relaxed) { return true }
            running = process
            return false
        }
        if late {  // `stop` came while it started
            process.terminate()
            process.wait()
        }
    }

    /// Until `stop`, on the calling thread: waits for the port-forward to end and starts it again, saying so
    /// (with kubectl's last words). Gives up when the pod is gone or kubectl refuses for good (RBAC).
    func keepUp(describing podDescription: String, logger: Logger) {
        var attempt = 0
        while !stopping.load(ordering: .relaxed) {
            let said = current.withLock { $0 }.readToEnd()
            guard !stopping.load(ordering: .relaxed) else { return }
            let last = said.split(separator: "\n").last.map { ": \($0)" } ?? ""
            logger.warning(
                "kubectl port-forward to the agent in \(podDescription) ended\(last); starting it again on 127.0.0.1:\(localPort)"
            )
            while !stopping.load(ordering: .relaxed) {
                pause(milliseconds: Self.backOff[min(attempt, Self.backOff.count - 1)])
                guard !stopping.load(ordering: .relaxed) else { return }
                attempt += 1
                do {
                    try restart()
                    attempt = 0
                    logger.notice("kubectl port-forward to the agent in \(podDescription) is back")
                    break
                } catch {
                    switch error {
                    case .notFound, .forbidden, .unauthorized:
                        logger.error(
                            "cannot start kubectl port-forward to the agent in \(podDescription) again: \(error). Remote calls fail from here on; start sysmirror again."
                        )
                        return
                    default:
                        logger.warning("kubectl port-forward to the agent in \(podDescription) failed again: \(error)")
                    }
                }
            }
        }
    }

    /// Sleeps in short steps, so that `stop` is not kept waiting.
    private func pause(milliseconds: UInt32) {
        var left = milliseconds
        while left > 0 && !stopping.load(ordering: .relaxed) {
            let step = min(left, 100)
            usleep(step * 1_000)
            left -= step
        }
    }

    /// Ends the port-forward, and the keeping up with it.
    func stop() {
        stopping.store(true, ordering: .relaxed)
        current.withLock { process in
            process.terminate()
            process.wait()
        }
    }
}
