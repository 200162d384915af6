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
/// comes back (`AgentClient.Resumption`); to another pod's agent when its pod is gone and the session
/// follows its workload.
final class PortForward: Sendable {
    /// Where it forwards to: the pod and the agent's port there.
    var destination: (pod: String, port: UInt16) { target.withLock { $0 } }
    /// The port-forward's end on this machine, the same across restarts.
    let localPort: UInt16
    /// The pods' namespace, for messages.
    let namespace: String
    private let kubectl: Kubectl
    private let target: Mutex<(pod: String, port: UInt16)>
    private let current: Mutex<HelperProcess>
    private let stopping = Atomic<Bool>(false)
    /// Waits between restarts, the last one repeated: a pod that refuses for long is not hammered.
    static let backOff: [UInt32] = [0, 200, 500, 1_000, 2_000, 5_000]

    /// What becomes of a port-forward whose pod may be gone (`keepUp` asks after each end).
    enum Successor {
        /// The pod is there: start it again.
        case same
        /// The pod is gone, and the session follows its workload to this pod's agent.
        case moveTo(pod: String, port: UInt16)
        /// The pod is gone and nothing follows it (said already).
        case none
    }

    private init(
        pod: String, namespace: String, agentPort: UInt16, localPort: UInt16, kubectl: Kubectl, process: HelperProcess
    ) {
        target = Mutex((pod, agentPort))
        self.namespace = namespace
        self.localPort = localPort
        self.kubectl = kubectl
        current = Mutex(process)
    }

    /// `kubectl port-forward pod/POD :PORT`, once it forwards.
    static func start(kubectl: Kubectl, pod: String, namespace: String, port: UInt16) throws(KubernetesFailure)
        -> PortForward
    {
        let (process, localPort) = try kubectl.portForward(pod: pod, port: port)
        return PortForward(
            pod: pod, namespace: namespace, agentPort: port, localPort: localPort, kubectl: kubectl, process: process)
    }

    /// `namespace/pod` of where it forwards to now.
    var described: String { "\(namespace)/\(destination.pod)" }

    var pid: Int32 { current.withLock { $0.pid } }

    var hasExited: Bool { current.withLock { $0.hasExited } }

    /// What the last port-forward wrote to standard error, when it has ended.
    func errors() -> String { String(decoding: current.withLock { $0.availableErrors() }, as: UTF8.self) }

    /// A new port-forward on the same local port, once it forwards (the old one has ended).
    func restart() throws(KubernetesFailure) {
        let (pod, port) = destination
        let (process, _) = try kubectl.portForward(pod: pod, port: port, localPort: localPort)
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
    /// (with kubectl's last words), each time after asking `successor` whether its pod is still there. Gives up when the pod is gone and nothing follows it, or kubectl refuses for good (RBAC).
    func keepUp(logger: Logger, successor: (_ pod: String, _ described: String) -> Successor) {
        var attempt = 0
        while !stopping.load(ordering: .relaxed) {
            let said = current.withLock { $0 }.readToEnd()
            guard !stopping.load(ordering: .relaxed) else { return }
            let last = said.split(separator: "\n").last.map { ": \($0)" } ?? ""
            logger.warning(
                "kubectl port-forward to the agent in \(described) ended\(last); starting it again on 127.0.0.1:\(localPort)"
            )
            while !stopping.load(ordering: .relaxed) {
                pause(milliseconds: Self.backOff[min(attempt, Self.backOff.count - 1)])
                guard !stopping.load(ordering: .relaxed) else { return }
                attempt += 1
                switch successor(destination.pod, described) {
                case .same: break
                case .moveTo(let pod, let port):
                    target.withLock { $0 = (pod, port) }
                    attempt = 0
                case .none: return
                }
                do {
                    try restart()
                    attempt = 0
                    logger.notice("kubectl port-forward to the agent in \(described) is back")
                    break
                } catch {
                    switch error {
                    case .forbidden, .unauthorized:
                        logger.error(
                            "cannot start kubectl port-forward to the agent in \(described) again: \(error). Remote calls fail from here on; start sysmirror again."
                        )
                        return
                    default:
                        logger.warning(
                            "kubectl port-forward to the agent in \(described) failed again: \(error)")
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
