import AgentLink
import Logging
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// What a session does when its pod goes (docs/kubernetes.md, "When the pod goes"): a workload target
/// follows the workload to its new ready pod, with an agent of its own that takes the session's token; a
/// pod target ends, saying why.
final class PodFollower: Sendable {
    let request: KubernetesSession.Request
    let token: [UInt8]
    let kubectl: Kubectl
    /// Told why, when the session's pod is gone and nothing follows it: the link then gives up at once.
    private let lostWatchers = Mutex<[@Sendable (String) -> Void]>([])

    init(request: KubernetesSession.Request, token: [UInt8], kubectl: Kubectl) {
        self.request = request
        self.token = token
        self.kubectl = kubectl
    }

    /// Calls `body` when the session's pod is gone and nothing follows it.
    func whenLost(_ body: @escaping @Sendable (String) -> Void) {
        lostWatchers.withLock { $0.append(body) }
    }

    /// Where the port-forward goes when `pod` (`described` as namespace/pod) may be gone: the same pod while it is there (not terminating);
    /// for a workload, its new ready pod with an agent added (the same token, so the link resumes there);
    /// otherwise nowhere, said on standard error and to `whenLost`.
    func successor(of pod: String, described: String, logger: Logger) -> PortForward.Successor {
        let gone: String
        switch Result(catching: { () throws(KubernetesFailure) in
            try kubectl.json(Pod.self, ["get", "pod", pod, "-o", "json"], about: ("pod", pod))
        }) {
        case .success(let current) where current.metadata.deletionTimestamp == nil: return .same
        case .success: gone = "is terminating"
        case .failure(.notFound): gone = "is gone"
        case .failure: return .same  // cannot tell (the API server is unreachable): kubectl will say
        }
        guard case .workload(let kind, let name, let container) = request.target, kind != .pod else {
            return lost(
                "the pod \(described) \(gone). A pod/NAME target cannot follow it: use its deployment/NAME or statefulset/NAME, which follows rollouts to the new pod. Remote calls fail from here on; start sysmirror again.",
                logger)
        }
        let workload = "\(kind.rawValue)/\(name)"
        logger.warning("the pod \(described) of \(workload) \(gone); looking for its new pod")
        let deadline = ContinuousClock.now + .seconds(request.readyTimeout)
        while true {
            do throws(KubernetesFailure) {
                let next = try KubernetesSession.findPod(kind: kind, name: name, kubectl: kubectl)
                if next.metadata.name != pod {
                    logger.warning(
                        "\(workload) replaced its pod \(described) with \(next.metadata.name); adding a new agent there"
                    )
                    let plan = try KubernetesSession.addAgent(
                        to: next, container: container, request: request, digest: SessionToken.digest(token),
                        kubectl: kubectl
                    ) { logger.notice("\($0)") }
                    try KubernetesSession.waitForAgent(
                        plan, in: next.metadata.name, ephemeral: true, kubectl: kubectl, deadline: deadline,
                        timeout: request.readyTimeout
                    ) { logger.notice("\($0)") }
                    return .moveTo(pod: next.metadata.name, port: plan.port)
                }
            } catch .notReady {
                // The new pod is not ready yet.
            } catch {
                return lost(
                    "cannot follow \(workload) to its new pod: \(error). Remote calls fail from here on; start sysmirror again.",
                    logger)
            }
            guard ContinuousClock.now < deadline else {
                return lost(
                    "\(workload) has no new ready pod within \(request.readyTimeout) s. Remote calls fail from here on; start sysmirror again.",
                    logger)
            }
            usleep(500_000)
        }
    }

    private func lost(_ reason: String, _ logger: Logger) -> PortForward.Successor {
        logger.error("\(reason)")
        for watcher in lostWatchers.withLock({ $0 }) { watcher(reason) }
        return .none
    }
}
