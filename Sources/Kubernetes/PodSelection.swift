/// Which pod and container a target means: pure decisions on the objects kubectl returned.
public enum PodSelection {
    /// Containers that meshes inject beside the application; never the default target.
    public static let sidecars: Set<String> = [
        "istio-proxy", "linkerd-proxy", "envoy-sidecar", "kuma-sidecar", "consul-dataplane", "cilium-envoy",
    ]

    /// A ready pod of a deployment or statefulset: the newest ready one (the current rollout's), by name
    /// when two were created in the same second.
    public static func pod(of workload: String, from pods: [Pod]) throws(KubernetesFailure) -> Pod {
        let ready = pods.filter(\.isReady).sorted {
            ($0.metadata.creationTimestamp ?? "", $1.metadata.name) > (
                $1.metadata.creationTimestamp ?? "", $0.metadata.name
            )
        }
        if let pod = ready.first { return pod }
        guard !pods.isEmpty else {
            throw .notReady("\(workload) has no pods (scaled to zero?). Scale it up, or target another workload.")
        }
        let states = pods.prefix(5).map { "\($0.metadata.name): \(summary(of: $0))" }.joined(separator: "; ")
        throw .notReady(
            "\(workload) has no ready pod (\(states)). Wait for it to become ready; `kubectl get pods` shows why it is not."
        )
    }

    /// A pod named by `pod/NAME` must be running and ready.
    public static func check(_ pod: Pod) throws(KubernetesFailure) {
        guard pod.isReady else {
            throw .notReady(
                "the pod \(pod.metadata.name) is not ready (\(summary(of: pod))). Wait for it, or target its deployment, which picks a ready pod."
            )
        }
    }

    /// The container to serve: the one named, else the pod's `kubectl.kubernetes.io/default-container`,
    /// else its first container that is not a mesh sidecar. It must be running.
    public static func container(in pod: Pod, named requested: String?) throws(KubernetesFailure) -> String {
        let names = pod.spec.containers.map(\.name)
        let name: String
        if let requested {
            guard names.contains(requested) else {
                throw .containerUnknown(requested, pod: pod.metadata.name, available: names)
            }
            name = requested
        } else if let preferred = pod.metadata.annotations?["kubectl.kubernetes.io/default-container"],
            names.contains(preferred)
        {
            name = preferred
        } else {
            name = names.first { !sidecars.contains($0) } ?? names.first ?? ""
        }
        guard pod.status(ofContainer: name)?.state?.running != nil else {
            let state = pod.status(ofContainer: name).map(describe) ?? "no status yet"
            throw .notReady("the container \(name) of the pod \(pod.metadata.name) is not running (\(state)).")
        }
        return name
    }

    /// A short account of why a pod is where it is, for messages.
    static func summary(of pod: Pod) -> String {
        if pod.metadata.deletionTimestamp != nil { return "terminating" }
        var parts = [pod.status?.phase ?? "Unknown"]
        if let reason = pod.status?.reason { parts.append(reason) }
        if let waiting = pod.status?.containerStatuses?.compactMap({ $0.state?.waiting?.reason }).first {
            parts.append(waiting)
        } else if let condition = pod.status?.conditions?.first(where: { $0.type == "Ready" && $0.status != "True" }) {
            parts.append(condition.reason ?? "not Ready")
        }
        return parts.joined(separator: ", ")
    }

    static func describe(_ status: Pod.ContainerStatus) -> String {
        if let waiting = status.state?.waiting { return "waiting: \(waiting.reason ?? "unknown reason")" }
        if let terminated = status.state?.terminated {
            return "terminated: \(terminated.reason ?? "exit code \(terminated.exitCode ?? -1)")"
        }
        return "no state yet"
    }
}
