/// Everything that can stop a Kubernetes session from starting, each with what happened and what to do.
public enum KubernetesFailure: Error, Equatable, Sendable, CustomStringConvertible {
    case badTarget(String, String)
    case kubectlMissing
    case kubectlTooOld(version: String)
    case kubectlUnusable(String)
    case noConfiguration(String)
    case kubeconfigUnreadable(String)
    case contextUnknown(String)
    case unreachable(String)
    case unauthorized
    case namespaceUnknown(String)
    case notFound(kind: String, name: String, namespace: String?)
    case notReady(String)
    case containerUnknown(String, pod: String, available: [String])
    case forbidden(user: String?, verb: String, resource: String, namespace: String?)
    case podSecurity(String)
    case admissionDenied(String)
    case ephemeralContainersUnsupported(String)
    case imagePull(image: String, reason: String, message: String)
    case agentFailed(container: String, reason: String)
    case agentNotReady(seconds: Int, state: String)
    case portForward(String)
    case interrupted
    case kubectl(command: String, message: String)

    /// The oldest kubectl sysmirror drives: `kubectl debug --custom` is on by default from 1.31.
    public static let minimumKubectl = (major: 1, minor: 31)

    public var description: String {
        switch self {
        case .badTarget(let text, let problem):
            "--target \(text): \(problem)"
        case .kubectlMissing:
            "kubectl was not found on PATH. sysmirror reaches the cluster through your own kubectl (1.\(Self.minimumKubectl.minor) or later), so that every way you log in keeps working: install it (https://kubernetes.io/docs/tasks/tools/) or add it to PATH."
        case .kubectlTooOld(let version):
            "kubectl \(version) is too old: sysmirror needs 1.\(Self.minimumKubectl.minor) or later (for `kubectl debug --custom`, which sets the agent's capabilities). Update kubectl; it may be newer than the cluster by one minor version."
        case .kubectlUnusable(let detail):
            "kubectl did not run: \(detail)"
        case .noConfiguration(let detail):
            "kubectl has no cluster configured (\(detail)). Point it at one with --kubeconfig FILE or KUBECONFIG, or check `kubectl config view`."
        case .kubeconfigUnreadable(let detail):
            "kubectl cannot read its kubeconfig: \(detail). Check --kubeconfig or KUBECONFIG."
        case .contextUnknown(let context):
            "the context \(context.debugDescription) is not in your kubeconfig. `kubectl config get-contexts` lists the ones you have."
        case .unreachable(let detail):
            "cannot reach the cluster's API server: \(detail). Check your network or VPN, and that `kubectl cluster-info` works with the same --context/--kubeconfig."
        case .unauthorized:
            "the cluster refused your credentials (Unauthorized). Log in again (they may have expired) and check with `kubectl auth whoami`."
        case .namespaceUnknown(let namespace):
            "the namespace \(namespace.debugDescription) does not exist. Give the right one with -n/--namespace; `kubectl get namespaces` lists them."
        case .notFound(let kind, let name, let namespace):
            "\(kind) \(name.debugDescription) was not found"
                + (namespace.map { " in the namespace \($0.debugDescription)" } ?? " in the current context's namespace")
                + ". Check the name and -n/--namespace; `kubectl get \(kind)s` lists them."
        case .notReady(let detail):
            detail
        case .containerUnknown(let container, let pod, let available):
            "the pod \(pod) has no container \(container.debugDescription); its containers are \(available.joined(separator: ", ")). Name one with /container/NAME."
        case .forbidden(let user, let verb, let resource, let namespace):
            "the cluster's RBAC does not let \(user.map { "user \($0.debugDescription)" } ?? "you") \(verb) \(resource)"
                + (namespace.map { " in the namespace \($0.debugDescription)" } ?? "")
                + ". Ask for the Role in docs/kubernetes.md (it lists every verb sysmirror uses); `\(Self.canI(verb: verb, resource: resource, namespace: namespace))` checks."
        case .podSecurity(let detail):
            "the namespace's Pod Security admission refused the agent container: \(detail). The agent needs the capabilities listed in docs/kubernetes.md; ask for an exemption or a namespace at the privileged level, or use --fs-mode local --no-remote-env where only outgoing traffic is needed."
        case .admissionDenied(let detail):
            "an admission controller of the cluster refused the agent container: \(detail)"
        case .ephemeralContainersUnsupported(let detail):
            "this cluster does not accept ephemeral containers (\(detail)); they are on by default from Kubernetes 1.25. Use --target targetless for outgoing traffic only, or run `sysmirror agent` in the pod yourself and use --agent."
        case .imagePull(let image, let reason, let message):
            "the agent image \(image) could not be pulled (\(reason)): \(message). Check --agent-image (or kubernetes.agent_image in --config) and that the cluster's nodes can pull it."
        case .agentFailed(let container, let reason):
            "the agent container \(container) stopped: \(reason)"
        case .agentNotReady(let seconds, let state):
            "the agent was not ready after \(seconds) s (\(state)). A slow image pull or a busy node can take longer: raise --agent-timeout; `kubectl describe pod` shows the kubelet's events."
        case .portForward(let detail):
            "kubectl port-forward to the agent failed: \(detail)"
        case .interrupted:
            "interrupted while starting the agent; nothing was left running"
        case .kubectl(let command, let message):
            "`\(command)` failed: \(message)"
        }
    }

    /// What a failed kubectl call's standard error means. `object` names what the call was about (kind,
    /// name), for NotFound; `namespace` is the one the call used, when known.
    public static func classify(
        errors text: String, command: String, object: (kind: String, name: String)? = nil, namespace: String? = nil,
        context: String? = nil
    ) -> KubernetesFailure {
        let message = text.split(separator: "\n").first { !isKlogLine($0) }.map(String.init) ?? text.trimmingWhitespace
        if text.contains("ephemeral containers are disabled for this cluster") {
            return .ephemeralContainersUnsupported(message)
        }
        if text.contains("context was not found for specified context")
            || text.contains("no context exists with the name")
            || (text.contains("context \"") && text.contains("does not exist"))
        {
            let name = context ?? text.split(separator: ":").last.map { $0.trimmingWhitespace } ?? "?"
            return .contextUnknown(name)
        }
        if text.contains("error loading config file") || text.hasPrefix("error: stat ") {
            return .kubeconfigUnreadable(message)
        }
        if text.contains("no configuration has been provided") { return .noConfiguration(message) }
        if text.contains("Unauthorized") || text.contains("You must be logged in to the server") {
            return .unauthorized
        }
        if text.contains("Unable to connect to the server")
            || text.contains("was refused - did you specify the right host")
            || text.contains("dial tcp") || text.contains("no such host") || text.contains("TLS handshake timeout")
        {
            return .unreachable(message)
        }
        if text.contains("violates PodSecurity") { return .podSecurity(message.after("is forbidden: ")) }
        if text.contains("admission webhook") && text.contains("denied the request") {
            return .admissionDenied(message.after("Error from server: "))
        }
        if let forbidden = Self.forbidden(in: text) { return forbidden }
        if text.contains("(NotFound)") {
            if text.contains("the server could not find the requested resource") && command.contains("debug") {
                return .ephemeralContainersUnsupported(message)
            }
            if text.contains("namespaces \"") { return .namespaceUnknown(namespace ?? "?") }
            if let object { return .notFound(kind: object.kind, name: object.name, namespace: namespace) }
        }
        return .kubectl(command: command, message: message)
    }

    /// kubectl's own log lines (klog: `E1127 05:20:01.000000 ...`), which come before the message.
    static func isKlogLine(_ line: Substring) -> Bool {
        guard let first = line.first, "IWEF".contains(first) else { return false }
        return line.dropFirst().prefix(4).count == 4 && line.dropFirst().prefix(4).allSatisfy(\.isNumber)
    }

    /// `User "dev" cannot patch resource "pods/ephemeralcontainers" in API group "" in the namespace "web"`:
    /// after `Error from server (Forbidden):` for most calls, after `error upgrading connection:` for a
    /// port-forward. The group qualifies the resource, before its subresource (`deployments.apps/scale`).
    static func forbidden(in text: String) -> KubernetesFailure? {
        guard text.contains("(Forbidden)") || text.contains(" is forbidden: User \""),
            let range = text.range(of: " cannot ")
        else { return nil }
        let words = text[range.upperBound...].split(separator: " ", maxSplits: 3)
        guard words.count >= 3, words[1] == "resource" else { return nil }
        let user = text[..<range.lowerBound].components(quotedAfter: "User ").first
        let namespace = text.components(quotedAfter: "in the namespace ").first
        let named = words[2].trimmingCharacters(in: "\"").split(separator: "/", maxSplits: 1)
        var resource = String(named[0])
        if let group = text.components(quotedAfter: "in API group ").first, !group.isEmpty {
            resource += ".\(group)"
        }
        if named.count == 2 { resource += "/\(named[1])" }
        return .forbidden(user: user, verb: String(words[0]), resource: resource, namespace: namespace)
    }

    /// The `kubectl auth can-i` that asks about a denial. A subresource must go in `--subresource`:
    /// `kubectl auth can-i patch pods/ephemeralcontainers` asks about the pod named "ephemeralcontainers".
    static func canI(verb: String, resource: String, namespace: String?) -> String {
        let parts = resource.split(separator: "/", maxSplits: 1)
        return
            (["kubectl", "auth", "can-i", verb, String(parts.first ?? "")]
            + (parts.count == 2 ? ["--subresource=\(parts[1])"] : []) + (namespace.map { ["-n", $0] } ?? []))
            .joined(separator: " ")
    }
}

extension StringProtocol {
    var trimmingWhitespace: String {
        String(drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
    }

    func trimmingCharacters(in set: String) -> String {
        String(drop { set.contains($0) }.reversed().drop { set.contains($0) }.reversed())
    }

    /// The text after the first `marker`, or all of it.
    func after(_ marker: String) -> String {
        guard let range = range(of: marker) else { return String(self) }
        return String(self[range.upperBound...])
    }

    /// The double-quoted strings that directly follow each `marker`.
    func components(quotedAfter marker: String) -> [String] {
        var results: [String] = []
        var rest = self[...]
        while let range = rest.range(of: marker + "\"") {
            let tail = rest[range.upperBound...]
            guard let end = tail.firstIndex(of: "\"") else { break }
            results.append(String(tail[..<end]))
            rest = tail[end...]
        }
        return results
    }
}
