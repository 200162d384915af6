import Foundation
import Testing

/// A Kubernetes cluster without one: a pod stand-in (its container in a process namespace of its own, as
/// under a kubelet) behind Fixtures/kube-standin, which answers kubectl's calls as the API server would and
/// starts the real agent when an ephemeral container is added. A `kubectl` first on PATH talks to it, and
/// its port-forward really forwards into the pod's network namespace. Needs root; `tearDown` removes all.
final class ClusterStandIn: @unchecked Sendable {  // set up before tests use it
    let pod: PodStandIn
    let directory: URL
    let kubeconfig: String
    let calls: String
    private var server: SpawnedService?

    static let readyPod = "web-7d9f8b-x2x4q"
    static let unreadyPod = "web-7d9f8b-zz9kq"
    static let image = "ghcr.io/sysmirror/agent:0.1.0"
    static let slowImage = "ghcr.io/sysmirror/agent:slow"

    /// - Parameters:
    ///   - network: the pod's services too (PodStandIn's `network`).
    ///   - incoming: the pod's application and a client namespace (PodStandIn's `incoming`).
    init(network: Bool = false, incoming: Bool = false) throws {
        pod = try PodStandIn(network: network, kubelet: true, incoming: incoming)
        directory = Fixtures.shared.directory.appendingPathComponent("cluster-\(pod.name)")
        kubeconfig = directory.appendingPathComponent("kubeconfig").path
        calls = directory.appendingPathComponent("calls.jsonl").path
        do {
            try start()
        } catch {
            tearDown()
            throw error
        }
    }

    private func start() throws {
        let bin = directory.appendingPathComponent("bin")
        try FileManager.default.createDirectory(at: bin, withIntermediateDirectories: true)
        chmod(directory.path, 0o755)
        let script = bin.appendingPathComponent("kube_standin.py").path
        try FileManager.default.copyItem(
            atPath: Fixtures.packageRoot.appendingPathComponent("Tests/Fixtures/kube-standin/kube_standin.py").path,
            toPath: script)
        try FileManager.default.createSymbolicLink(
            atPath: bin.appendingPathComponent("kubectl").path, withDestinationPath: script)
        // An old kubectl, elsewhere.
        let old = directory.appendingPathComponent("old-bin")
        try FileManager.default.createDirectory(at: old, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(
            at: directory.appendingPathComponent("empty"), withIntermediateDirectories: true)
        try """
            #!/bin/sh
            echo '{"clientVersion": {"major": "1", "minor": "29", "gitVersion": "v1.29.4", "platform": "linux/amd64"}}'
            """.write(to: old.appendingPathComponent("kubectl"), atomically: false, encoding: .utf8)
        for path in [bin.path, old.path, directory.appendingPathComponent("empty").path, script, old.appendingPathComponent("kubectl").path] { chmod(path, 0o755) }

        let created = "2026-11-27T05:00:00Z"
        let state: [String: Any] = [
            "servers": [
                "https://standin.cluster:6443": ["ephemeral_containers": true],
                "https://legacy.cluster:6443": ["ephemeral_containers": false],
            ],
            "namespaces": ["default": [:], "secure": ["pod_security": "baseline"]],
            "forbid": ["viewer": [["patch", "pods/ephemeralcontainers"]]],
            "images": [Self.image: ["start_seconds": 0.2], Self.slowImage: ["start_seconds": 600]],
            "agent_binary": Fixtures.shared.sysmirror,
            "pods": [
                [
                    "name": Self.readyPod, "namespace": "default", "labels": ["app": "web"], "created": created,
                    "containers": ["istio-proxy", "app"], "netns": pod.podNamespace, "pid": pod.containerPID,
                    "owner": ["kind": "ReplicaSet", "name": "web-7d9f8b"],
                ],
                [
                    "name": Self.unreadyPod, "namespace": "default", "labels": ["app": "web"],
                    "created": "2026-11-27T05:10:00Z", "containers": ["app"], "ready": false,
                    "netns": pod.podNamespace, "pid": pod.containerPID,
                    "owner": ["kind": "ReplicaSet", "name": "web-7d9f8b"],
                ],
                [
                    "name": "api-5c6d7e-aaaaa", "namespace": "default", "labels": ["app": "api"], "created": created,
                    "containers": ["api"], "ready": false, "netns": pod.podNamespace, "pid": pod.containerPID,
                ],
                [
                    "name": "web-0", "namespace": "secure", "labels": ["app": "vault"], "created": created,
                    "containers": ["app"], "netns": pod.podNamespace, "pid": pod.containerPID,
                ],
            ],
            "deployments": [
                ["name": "web", "namespace": "default", "selector": ["app": "web"]],
                ["name": "api", "namespace": "default", "selector": ["app": "api"]],
            ],
            "statefulsets": [["name": "vault", "namespace": "secure", "selector": ["app": "vault"]]],
        ]
        let statePath = directory.appendingPathComponent("state.json").path
        try JSONSerialization.data(withJSONObject: state).write(to: URL(fileURLWithPath: statePath))
        let config: [String: Any] = [
            "apiVersion": "v1", "kind": "Config", "current-context": "dev",
            "contexts": [
                ["name": "dev", "context": ["cluster": "standin", "user": "dev", "namespace": "default"]],
                ["name": "viewer", "context": ["cluster": "standin", "user": "viewer"]],
                ["name": "legacy", "context": ["cluster": "legacy", "user": "dev"]],
                ["name": "offline", "context": ["cluster": "offline", "user": "dev"]],
            ],
            "clusters": [
                ["name": "standin", "cluster": ["server": "https://standin.cluster:6443"]],
                ["name": "legacy", "cluster": ["server": "https://legacy.cluster:6443"]],
                ["name": "offline", "cluster": ["server": "https://127.0.0.1:1"]],
            ],
            "users": [["name": "dev", "user": ["token": "dev-token"]], ["name": "viewer", "user": ["token": "v"]]],
        ]
        // YAML, which kubeconfig files are, takes JSON but not its escaped slashes.
        try JSONSerialization.data(withJSONObject: config, options: .withoutEscapingSlashes).write(
            to: URL(fileURLWithPath: kubeconfig))
        chmod(kubeconfig, 0o644)
        server = try SpawnedService([
            "python3", script, "serve", statePath, bin.appendingPathComponent("apiserver.sock").path, calls,
        ])
        try PodStandIn.waitUntil("the API server stand-in") {
            FileManager.default.fileExists(atPath: bin.appendingPathComponent("apiserver.sock").path)
        }
    }

    var bin: String { directory.appendingPathComponent("bin").path }

    /// `sysmirror trace --target ...` as nobody in the developer's namespace, with the stand-in's kubectl
    /// first on PATH (or `path`) and its kubeconfig in KUBECONFIG.
    func trace(
        _ program: [String], target: String, options: [String] = [], path: String? = nil, timeout: TimeInterval = 60
    ) throws -> (Outcome, [String]) {
        let log = Fixtures.shared.path("trace-\(UUID().uuidString).log")
        defer { try? FileManager.default.removeItem(atPath: log) }
        let outcome = try Run.process(
            [
                "/usr/bin/env", "PATH=\(path ?? "\(bin):/usr/local/bin:/usr/bin:/bin")", "KUBECONFIG=\(kubeconfig)",
                Fixtures.shared.sysmirror, "trace", "--log", log, "--target", target,
            ] + options + ["--"] + program, unprivileged: true, namespace: pod.developerNamespace, timeout: timeout)
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        return (outcome, text.split(separator: "\n").map(String.init))
    }

    /// The calls the API server stand-in saw, in order (JSON objects).
    var recorded: [[String: Any]] {
        let text = (try? String(contentsOfFile: calls, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }

    /// The pids of the port-forwards kubectl started.
    var portForwards: [Int32] {
        recorded.compactMap { ($0["forwarding"] as? [String: Any])?["pid"] as? Int }.map(Int32.init)
    }

    func tearDown() {
        if let server {
            kill(server.pid, SIGTERM)
            var status: Int32 = 0
            waitpid(server.pid, &status, 0)
        }
        // Port-forwards that outlived a failing test.
        for pid in portForwards where kill(pid, 0) == 0 { kill(pid, SIGKILL) }
        pod.tearDown()
        try? FileManager.default.removeItem(at: directory)
    }
}

/// Whether a process is gone (or a zombie), within `seconds`.
func exits(_ pid: Int32, within seconds: Double) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    repeat {
        let state = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8))?
            .split(separator: ")").last?.split(separator: " ").first
        if state == nil || state == "Z" { return true }
        usleep(20_000)
    } while Date() < deadline
    return false
}
