import Foundation

/// How the agent is started in the cluster for one session: pure, so that what sysmirror asks of the
/// cluster is visible and tested without one.
public struct AgentPlan: Equatable, Sendable {
    /// What the session's features need of the agent; each adds the capabilities it needs and no more.
    public struct Features: Equatable, Sendable {
        /// Serves the target container's files and environment (not targetless).
        public var targetFiles: Bool
        /// Writes files in the pod (`--fs-mode write`).
        public var writesFiles: Bool
        /// Mirrors or steals the pod's incoming traffic (`--incoming`, on by default).
        public var takesIncoming: Bool

        public init(targetFiles: Bool, writesFiles: Bool, takesIncoming: Bool = false) {
            self.targetFiles = targetFiles
            self.writesFiles = writesFiles
            self.takesIncoming = takesIncoming
        }

        /// Linux capabilities, after dropping all: SYS_PTRACE reaches /proc/1/root and environ of a target
        /// running as another user, DAC_READ_SEARCH reads its files whatever their mode; writing needs
        /// DAC_OVERRIDE, and FOWNER and CHOWN keep a written file's mode and owner; incoming traffic needs
        /// NET_ADMIN for its netfilter rules and the copy of mirrored packets.
        public var capabilities: [String] {
            guard targetFiles else { return [] }
            return ["SYS_PTRACE", "DAC_READ_SEARCH"] + (writesFiles ? ["DAC_OVERRIDE", "FOWNER", "CHOWN"] : [])
                + (takesIncoming ? ["NET_ADMIN"] : [])
        }
    }

    public static let agentPath = "/usr/local/bin/sysmirror"
    /// Labels every object sysmirror creates, so that `kubectl get pods -l` finds them.
    public static let managedLabel = ("app.kubernetes.io/managed-by", "sysmirror")

    public var image: String
    /// `sysmirror-agent-` and six random hex digits: unique among the pod's ephemeral containers.
    public var containerName: String
    /// The agent listens on 127.0.0.1:port inside the pod only; the CLI reaches it through port-forward.
    public var port: UInt16
    /// SHA-256 of the session's token, in hex: the pod spec holds only this, never the token.
    public var tokenDigest: String
    public var idleTimeout: Int
    public var features: Features

    public init(
        image: String, containerName: String, port: UInt16, tokenDigest: String, idleTimeout: Int, features: Features
    ) {
        self.image = image
        self.containerName = containerName
        self.port = port
        self.tokenDigest = tokenDigest
        self.idleTimeout = idleTimeout
        self.features = features
    }

    /// A fresh name and a port from 20000-29999 (below Linux's ephemeral range, where connections of the
    /// pod's own take their local ports).
    public static func random(
        image: String, tokenDigest: String, idleTimeout: Int, features: Features
    ) -> AgentPlan {
        let suffix = String(UInt32.random(in: 0..<0x100_0000), radix: 16)
        return AgentPlan(
            image: image, containerName: "sysmirror-agent-" + String(repeating: "0", count: 6 - suffix.count) + suffix,
            port: UInt16.random(in: 20000...29999), tokenDigest: tokenDigest, idleTimeout: idleTimeout,
            features: features)
    }

    /// The agent's command line in the pod: the target is the container's main process, PID 1 of the
    /// process namespace the ephemeral container joins; targetless serves its own root (for resolv.conf).
    public var command: [String] {
        [
            Self.agentPath, "agent", "--listen", "127.0.0.1:\(port)",
        ] + (features.targetFiles ? ["--pid", "1"] : ["--root", "/"]) + [
            "--token-sha256", tokenDigest, "--idle-timeout", "\(idleTimeout)",
        ]
    }

    /// `kubectl debug` arguments (after the global flags) that add the agent to `pod`, sharing the process
    /// namespace of `container`. `customFile` holds `customProfile`.
    public func debugArguments(pod: String, container: String, customFile: String) -> [String] {
        [
            "debug", "pod/\(pod)", "--image", image, "--image-pull-policy", "IfNotPresent", "--container",
            containerName, "--target", container, "--profile", "general", "--custom", customFile, "--quiet", "--",
        ] + command
    }

    /// The `--custom` partial container spec: root (to use the capabilities), all capabilities dropped but
    /// the features', and the agent's last log lines as the termination message when it fails.
    public var customProfile: String {
        encode(
            CustomProfile(
                securityContext: securityContext(user: 0), terminationMessagePolicy: "FallbackToLogsOnError"))
    }

    /// The targetless pod: the agent alone, as nobody, no capabilities, no service account token, and
    /// `activeDeadlineSeconds` as a backstop should the CLI die before it deletes the pod.
    public func targetlessPod(name: String, deadline: Int) -> String {
        encode(
            PodManifest(
                metadata: .init(name: name, labels: [Self.managedLabel.0: Self.managedLabel.1]),
                spec: .init(
                    containers: [
                        .init(
                            name: "agent", image: image, imagePullPolicy: "IfNotPresent", command: command,
                            securityContext: securityContext(user: 65534),
                            terminationMessagePolicy: "FallbackToLogsOnError")
                    ],
                    restartPolicy: "Never", activeDeadlineSeconds: deadline, automountServiceAccountToken: false,
                    terminationGracePeriodSeconds: 1)))
    }

    func securityContext(user: Int) -> SecurityContext {
        SecurityContext(
            runAsUser: user, runAsNonRoot: user != 0, allowPrivilegeEscalation: false,
            capabilities: .init(drop: ["ALL"], add: features.capabilities.isEmpty ? nil : features.capabilities),
            seccompProfile: user != 0 ? .init(type: "RuntimeDefault") : nil)
    }

    func encode(_ value: some Encodable) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: (try? encoder.encode(value)) ?? Data(), as: UTF8.self)
    }

    struct SecurityContext: Encodable {
        struct Capabilities: Encodable {
            var drop: [String]
            var add: [String]?
        }
        struct Seccomp: Encodable { var type: String }
        var runAsUser: Int
        var runAsNonRoot: Bool
        var allowPrivilegeEscalation: Bool
        var capabilities: Capabilities
        var seccompProfile: Seccomp?
    }

    struct CustomProfile: Encodable {
        var securityContext: SecurityContext
        var terminationMessagePolicy: String
    }

    struct PodManifest: Encodable {
        struct Metadata: Encodable {
            var name: String
            var labels: [String: String]
        }
        struct Container: Encodable {
            var name: String
            var image: String
            var imagePullPolicy: String
            var command: [String]
            var securityContext: SecurityContext
            var terminationMessagePolicy: String
        }
        struct Spec: Encodable {
            var containers: [Container]
            var restartPolicy: String
            var activeDeadlineSeconds: Int
            var automountServiceAccountToken: Bool
            var terminationGracePeriodSeconds: Int
        }
        var apiVersion = "v1"
        var kind = "Pod"
        var metadata: Metadata
        var spec: Spec
    }
}

/// Where the agent's container stands, from its status in the pod.
public enum AgentContainerState: Equatable, Sendable {
    case starting(String)
    case running
    case failed(KubernetesFailure)

    /// Waiting reasons the kubelet does not get past by itself are failures at once; the rest are steps.
    public init(_ status: Pod.ContainerStatus?, container: String, image: String) {
        guard let status, let state = status.state else {
            self = .starting("waiting for the kubelet to create it")
            return
        }
        if state.running != nil {
            self = .running
        } else if let terminated = state.terminated {
            let message = terminated.message?.trimmingWhitespace ?? ""
            self = .failed(
                .agentFailed(
                    container: container,
                    reason: "\(terminated.reason ?? "exited") with status \(terminated.exitCode ?? -1)"
                        + (message.isEmpty ? "" : ": \(message)")))
        } else {
            let reason = state.waiting?.reason ?? "Waiting"
            let message = state.waiting?.message ?? ""
            switch reason {
            case "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "RegistryUnavailable":
                self = .failed(.imagePull(image: image, reason: reason, message: message))
            case "CreateContainerConfigError", "CreateContainerError", "RunContainerError", "CrashLoopBackOff":
                self = .failed(.agentFailed(container: container, reason: "\(reason): \(message)"))
            default:
                self = .starting(message.isEmpty ? reason : "\(reason): \(message)")
            }
        }
    }
}
