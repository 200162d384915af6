import AgentLink
import Foundation
import LinuxSystem
import Logging
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A session's agent in the cluster (docs/kubernetes.md): finds the target pod, adds the agent to it as an
/// ephemeral container (or starts a targetless pod), waits until it answers through `kubectl port-forward`,
/// and on `end` stops the port-forward and deletes what it created. Start and end it on the main thread:
/// kubectl helpers end with the thread that started them.
public final class KubernetesSession {
    public struct Request: Sendable {
        public var target: KubernetesTarget
        public var kubectl: Kubectl.Settings
        public var image: String
        /// How long the agent may take to answer, from the moment it was requested.
        public var readyTimeout: Int
        /// The agent exits this long after the session ends (or its CLI dies).
        public var idleTimeout: Int
        public var writesFiles: Bool
        public var takesIncoming: Bool

        public init(
            target: KubernetesTarget, kubectl: Kubectl.Settings, image: String, readyTimeout: Int, idleTimeout: Int,
            writesFiles: Bool, takesIncoming: Bool = false
        ) {
            self.takesIncoming = takesIncoming
            self.target = target
            self.kubectl = kubectl
            self.image = image
            self.readyTimeout = readyTimeout
            self.idleTimeout = idleTimeout
            self.writesFiles = writesFiles
        }
    }

    /// The port-forward's end on this machine.
    public let address: AgentAddress
    /// The connection through the port-forward that found the agent answering, its handshake done: the
    /// session's link, which then starts without a second stream set-up and hello (`takeOpenedSession`).
    private let opened: Mutex<OpenedSession?>
    /// The session's token: random, made for this session only (an agent added to a workload's new pod
    /// takes the same).
    public let token: [UInt8]
    /// The processes the session runs beside the program (its port-forward, whichever runs now).
    public var helpers: @Sendable () -> Set<Int32> { { [forward] in [forward.pid] } }
    private let kubectl: Kubectl
    private let forward: PortForward
    private let follower: PodFollower
    /// Starts the port-forward again whenever it ends before the session does.
    private var keeper: ThreadHandle?
    /// The targetless pod to delete at the end.
    private let ownPod: String?

    /// A targetless pod's backstop: the cluster stops it after this long, should nobody delete it.
    static let targetlessDeadline = 12 * 3600

    /// Starts the agent; `progress` hears each step, with the time since the start.
    public static func start(
        _ request: Request, environment: [String], logger: Logger, progress: @escaping (String) -> Void
    ) throws(KubernetesFailure) -> KubernetesSession {
        let interruption = Interruption()
        defer { interruption.restore() }
        let started = ContinuousClock.now
        let step: (String) -> Void = { text in
            let elapsed = (ContinuousClock.now - started).components
            let seconds = Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18
            progress(String(format: "[%5.1fs] ", seconds) + text)
        }
        let kubectl = try Kubectl(settings: request.kubectl, environment: environment) {
            Interruption.requested.load(ordering: .relaxed)
        }
        let token = SessionToken.random()
        let digest = SessionToken.digest(token)
        let deadline = started + .seconds(request.readyTimeout)
        var ownPod: String?
        do throws(KubernetesFailure) {
            let plan: AgentPlan
            let pod: Pod
            switch request.target {
            case .workload(let kind, let name, let container):
                step(
                    "finding \(kind.rawValue)/\(name)" + (request.kubectl.namespace.map { " in namespace \($0)" } ?? "")
                )
                pod = try findPod(kind: kind, name: name, kubectl: kubectl)
                plan = try addAgent(
                    to: pod, container: container, request: request, digest: digest, kubectl: kubectl, step: step)
            case .targetless:
                plan = AgentPlan.random(
                    image: request.image, tokenDigest: digest, idleTimeout: request.idleTimeout,
                    features: .init(targetFiles: false, writesFiles: false))
                let name = plan.containerName.replacingOccurrences(of: "-agent-", with: "-targetless-")
                removeFinishedTargetlessPods(kubectl: kubectl)
                step("starting the targetless agent pod \(name) (\(plan.image))")
                let manifest = plan.targetlessPod(name: name, deadline: targetlessDeadline)
                pod = try kubectl.json(Pod.self, ["create", "-f", "-", "-o", "json"], input: Array(manifest.utf8))
                ownPod = name
            }
            let podName = pod.metadata.name
            step("waiting for the agent to start")
            try waitForAgent(
                plan, in: podName, ephemeral: ownPod == nil, kubectl: kubectl, deadline: deadline,
                timeout: request.readyTimeout, step: step)
            step("agent running; port-forward to 127.0.0.1:\(plan.port) in the pod")
            let forward = try PortForward.start(
                kubectl: kubectl, pod: podName, namespace: pod.metadata.namespace ?? "?", port: plan.port)
            let address = AgentAddress.tcp(host: "127.0.0.1", port: Int(forward.localPort))
            let opened: OpenedSession
            do {
                opened = try waitForAnswer(
                    address, token: token, forward: forward, deadline: deadline, timeout: request.readyTimeout,
                    logger: logger)
            } catch {
                forward.stop()
                throw error
            }
            step("agent answering at 127.0.0.1:\(forward.localPort)")
            let session = KubernetesSession(
                request: request, address: address, token: token, opened: opened, kubectl: kubectl, forward: forward,
                ownPod: ownPod)
            session.keepPortForwardUp(logger: logger)
            return session
        } catch {
            if let ownPod { deletePod(ownPod, kubectl: kubectl) }
            throw error
        }
    }

    private init(
        request: Request, address: AgentAddress, token: [UInt8], opened: OpenedSession, kubectl: Kubectl,
        forward: PortForward, ownPod: String?
    ) {
        self.address = address
        self.opened = Mutex(opened)
        self.token = token
        self.kubectl = kubectl
        follower = PodFollower(request: request, token: token, kubectl: kubectl)
        self.forward = forward
        self.ownPod = ownPod
    }

    /// The session that answered at the start, for the trace's link; nil once taken.
    public func takeOpenedSession() -> OpenedSession? {
        opened.withLock { $0.take() }
    }

    /// Stops the port-forward and deletes the targetless pod. An ephemeral agent exits by itself after its
    /// idle timeout (ephemeral containers cannot be removed from a pod).
    public func end() {
        forward.stop()
        keeper.take()?.join()
        if let ownPod { Self.deletePod(ownPod, kubectl: kubectl) }
    }

    /// kubectl port-forward ends when the kubelet's stream idle timeout passes, the API server drops the
    /// stream, or the pod goes away: it is started again on the same port, and the link comes back; to the
    /// workload's new pod, with an agent of its own, when a rollout replaced the pod.
    private func keepPortForwardUp(logger: Logger) {
        keeper = try? ThreadHandle.start(name: "sysmirror-forward") { [forward, follower] in
            forward.keepUp(logger: logger) { follower.successor(of: $0, described: $1, logger: logger) }
        }
    }

    /// Registers what to tell (on the port-forward's thread) when the session's pod is gone and nothing
    /// follows it.
    public var whenLost: @Sendable (@escaping @Sendable (String) -> Void) -> Void {
        { [follower] in follower.whenLost($0) }
    }

    /// Adds the agent to `pod`, beside the container to serve, as an ephemeral container; returns its plan.
    static func addAgent(
        to pod: Pod, container: String?, request: Request, digest: String, kubectl: Kubectl,
        step: (String) -> Void
    ) throws(KubernetesFailure) -> AgentPlan {
        let target = try PodSelection.container(in: pod, named: container)
        if pod.spec.shareProcessNamespace == true {
            throw KubernetesFailure.notReady(
                "the pod \(pod.metadata.name) shares one process namespace among its containers, where the container's main process is not PID 1; sysmirror cannot tell it apart yet. Run `sysmirror agent --pid PID` in the pod yourself and use --agent."
            )
        }
        let plan = AgentPlan.random(
            image: request.image, tokenDigest: digest, idleTimeout: request.idleTimeout,
            features: .init(targetFiles: true, writesFiles: request.writesFiles, takesIncoming: request.takesIncoming))
        step(
            "pod \(pod.metadata.namespace ?? "?")/\(pod.metadata.name), container \(target); adding the agent as ephemeral container \(plan.containerName) (\(plan.image))"
        )
        let custom = NSTemporaryDirectory() + "sysmirror-custom-\(getpid()).json"
        _ = FileManager.default.createFile(atPath: custom, contents: Data(plan.customProfile.utf8))
        defer { try? FileManager.default.removeItem(atPath: custom) }
        _ = try kubectl.run(
            plan.debugArguments(pod: pod.metadata.name, container: target, customFile: custom),
            about: ("pod", pod.metadata.name))
        return plan
    }

    static func findPod(kind: KubernetesTarget.Kind, name: String, kubectl: Kubectl) throws(KubernetesFailure) -> Pod {
        switch kind {
        case .pod:
            let pod = try get(Pod.self, ["get", "pod", name, "-o", "json"], kind: "pod", name: name, kubectl: kubectl)
            try PodSelection.check(pod)
            return pod
        case .deployment, .statefulset:
            let workload = try get(
                Workload.self, ["get", kind.rawValue, name, "-o", "json"], kind: kind.rawValue, name: name,
                kubectl: kubectl)
            let pods = try kubectl.json(
                PodList.self, ["get", "pods", "-l", workload.spec.selector.query, "-o", "json"])
            return try PodSelection.pod(of: "\(kind.rawValue)/\(name)", from: pods.items)
        }
    }

    /// A `kubectl get` whose NotFound may mean that the namespace does not exist: asks, where allowed.
    static func get<T: Decodable>(
        _ type: T.Type, _ arguments: [String], kind: String, name: String, kubectl: Kubectl
    ) throws(KubernetesFailure) -> T {
        do {
            return try kubectl.json(type, arguments, about: (kind, name))
        } catch .notFound(let kind, let name, let namespace) {
            if let namespace,
                case .namespaceUnknown? = Result(catching: { () throws(KubernetesFailure) in
                    _ = try kubectl.run(["get", "namespace", namespace, "-o", "name"], about: ("namespace", namespace))
                }).failure
            {
                throw .namespaceUnknown(namespace)
            }
            throw .notFound(kind: kind, name: name, namespace: namespace)
        }
    }

    /// Polls the pod until the agent's container runs; fails at once on what will not pass by itself.
    static func waitForAgent(
        _ plan: AgentPlan, in pod: String, ephemeral: Bool, kubectl: Kubectl, deadline: ContinuousClock.Instant,
        timeout: Int, step: (String) -> Void
    ) throws(KubernetesFailure) {
        var last = ""
        while true {
            let current = try kubectl.json(Pod.self, ["get", "pod", pod, "-o", "json"], about: ("pod", pod))
            let status =
                ephemeral
                ? current.status(ofEphemeralContainer: plan.containerName) : current.status(ofContainer: "agent")
            switch AgentContainerState(status, container: plan.containerName, image: plan.image) {
            case .running:
                return
            case .failed(.imagePull(let image, let reason, let message)):
                throw .imagePull(
                    image: image, reason: reason,
                    message: pullFailure(in: pod, container: plan.containerName, waiting: message, kubectl: kubectl))
            case .failed(let failure):
                throw failure
            case .starting(let state):
                if state != last { step("agent container: \(state)") }
                last = state
            }
            guard ContinuousClock.now < deadline else { throw .agentNotReady(seconds: timeout, state: last) }
            try pause(milliseconds: 250)
        }
    }

    /// The kubelet's own account of a failed pull, from the pod's events (a kubelet before 1.32 says only
    /// "Back-off pulling image" in the container's status once it is backing off); the container's waiting
    /// message when events cannot be read.
    static func pullFailure(in pod: String, container: String, waiting: String, kubectl: Kubectl) -> String {
        let events = try? kubectl.json(
            EventList.self,
            ["get", "events", "--field-selector", "involvedObject.kind=Pod,involvedObject.name=\(pod)", "-o", "json"])
        return (events ?? EventList(items: [])).pullFailure(of: container, waiting: waiting)
    }

    /// Connects through the port-forward until the agent completes the handshake, and returns that session:
    /// the container runs before the agent listens, and kubectl accepts connections before the pod's end does.
    /// A port-forward that ends meanwhile is started again: kubectl ends it at the first connection the pod
    /// refuses, and an agent may listen a little after its container runs.
    static func waitForAnswer(
        _ address: AgentAddress, token: [UInt8], forward: PortForward, deadline: ContinuousClock.Instant,
        timeout: Int, logger: Logger
    ) throws(KubernetesFailure) -> OpenedSession {
        var last = ""
        while true {
            do {
                return try OpenedSession.open(to: address, token: token, timeoutSeconds: 5)
            } catch .refused(_, let reason) {
                throw .agentFailed(container: "agent", reason: "it refused the session: \(reason)")
            } catch {
                last = error.description
            }
            guard ContinuousClock.now < deadline else { throw .agentNotReady(seconds: timeout, state: last) }
            try pause(milliseconds: 200)
            if forward.hasExited {
                // A cluster that refuses it (RBAC, a pod gone) makes the restart fail, with kubectl's reason.
                logger.debug(
                    "kubectl port-forward ended while the agent started (\(forward.errors())); starting it again")
                try forward.restart()
            }
        }
    }

    /// Targetless pods whose sessions ended without deleting them (a killed CLI) and that have since
    /// stopped. Best effort: a cluster that forbids listing them keeps them.
    static func removeFinishedTargetlessPods(kubectl: Kubectl) {
        _ = try? kubectl.run([
            "delete", "pods", "-l", "\(AgentPlan.managedLabel.0)=\(AgentPlan.managedLabel.1)", "--field-selector",
            "status.phase!=Running,status.phase!=Pending", "--ignore-not-found", "--wait=false",
        ])
    }

    /// Also after Ctrl-C: the deletion is the cleaning up.
    static func deletePod(_ name: String, kubectl: Kubectl) {
        var kubectl = kubectl
        kubectl.shouldStop = { false }
        _ = try? kubectl.run([
            "delete", "pod", name, "--ignore-not-found", "--wait=false",
        ])
    }

    static func pause(milliseconds: Int) throws(KubernetesFailure) {
        usleep(UInt32(milliseconds) * 1000)
        if Interruption.requested.load(ordering: .relaxed) { throw .interrupted }
    }
}

/// Ctrl-C (and SIGTERM, SIGHUP) while the agent starts: noted, so that the start stops and cleans up
/// instead of dying with a pod or a port-forward left behind. The previous handlers come back afterwards.
final class Interruption {
    static let requested = Atomic<Bool>(false)
    static let signals: [Int32] = [SIGINT, SIGTERM, SIGHUP]
    private var previous: [Int32: sigaction] = [:]

    init() {
        Self.requested.store(false, ordering: .relaxed)
        for signal in Self.signals {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { _ in Interruption.requested.store(true, ordering: .relaxed) }
            sigemptyset(&action.sa_mask)
            var old = sigaction()
            sigaction(signal, &action, &old)
            previous[signal] = old
        }
    }

    func restore() {
        for (signal, var action) in previous { sigaction(signal, &action, nil) }
    }
}

extension Result {
    var failure: Failure? {
        if case .failure(let error) = self { return error }
        return nil
    }
}
