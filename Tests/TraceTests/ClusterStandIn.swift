import Foundation
import Testing

/// A Kubernetes cluster without one: a pod stand-in (its container in a process namespace of its own, as
/// under a kubelet) behind Fixtures/kube-apiserver, an API server and kubelet double that the real kubectl
/// talks to over HTTPS, and that starts the real agent when an ephemeral container is added and serves
/// port-forward (WebSocket or SPDY) into the pod's network namespace. The machine's own kubectl is first on
/// PATH. A test may replace the ready pod with a second pod stand-in (`rollOut`) or delete it (`deletePod`).
/// Needs root; `tearDown` removes all.
final class ClusterStandIn: @unchecked Sendable {  // set up before tests use it; rollOut runs on the test's thread
    let pod: PodStandIn
    let directory: URL
    let kubeconfig: String
    let calls: String
    private var server: SpawnedService?
    /// The double's control socket (apiserver.py, SOCKET).
    private var controlSocket = ""
    /// The ready pod's successor, once `rollOut` made it.
    private(set) var replacement: PodStandIn?

    static let readyPod = "web-7d9f8b-x2x4q"
    /// The pod a rollout puts in the ready pod's place (its hostname too).
    static let replacementPod = "web-7d9f8b-r2new"
    /// Which pod a program reads from: "1" in the ready pod, "2" in its replacement. Under /config: /etc
    /// is the laptop's by default (docs/configuration.md).
    static let generationFile = "/config/pod-generation"
    static let unreadyPod = "web-7d9f8b-zz9kq"
    static let image = "ghcr.io/sysmirror/agent:0.1.0"
    static let slowImage = "ghcr.io/sysmirror/agent:slow"
    /// Its container runs two seconds before the agent in it listens (a slow start, a busy node).
    static let lateImage = "ghcr.io/sysmirror/agent:late"
    /// The kubelet's stream idle timeout of the `idle` cluster, in seconds: shorter than kubectl's pings
    /// over WebSocket (every 10 s), so a quiet port-forward ends.
    static let idleTimeout = 3

    /// The contexts of the kubeconfig, each a way the cluster answers.
    enum Context {
        /// The developer, allowed everything (the current context).
        static let dev = "dev"
        /// Not allowed to add ephemeral containers.
        static let viewer = "viewer"
        /// Allowed to add the agent, not to port-forward to it (by either transport).
        static let noForward = "no-forward"
        /// A cluster without the ephemeralcontainers subresource.
        static let legacy = "legacy"
        /// Nothing listens at its server's address.
        static let offline = "offline"
        /// A cluster whose port-forward refuses the WebSocket upgrade, as before Kubernetes 1.30.
        static let spdy = "spdy"
        /// A cluster whose kubelet ends port-forwards quiet for `idleTimeout` seconds.
        static let idle = "idle"
        /// A token the API server does not know (an expired one).
        static let expired = "expired"
    }

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

    /// The kubectl on this process's PATH (scripts/test installs one under .build when the machine has
    /// none), or a copy of it in the fixture folder when nobody cannot run it where it is (a checkout
    /// nobody cannot enter). Found once.
    static let machineKubectl: Result<String, FixtureError> = {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        guard
            let found = path.split(separator: ":").map({ "\($0)/kubectl" }).first(where: {
                FileManager.default.isExecutableFile(atPath: $0)
            })
        else { return .failure(FixtureError(description: "no kubectl on PATH (scripts/test installs one)")) }
        if (try? Run.process(["test", "-x", found], unprivileged: true))?.status == 0 { return .success(found) }
        let copy = Fixtures.shared.path("kubectl")
        do {
            let resolved = URL(fileURLWithPath: found).resolvingSymlinksInPath().path
            try FileManager.default.copyItem(atPath: resolved, toPath: copy)
        } catch {
            return .failure(FixtureError(description: "cannot copy \(found) where nobody can run it: \(error)"))
        }
        chmod(copy, 0o755)
        return .success(copy)
    }()

    private func start() throws {
        try FileManager.default.createDirectory(at: URL(fileURLWithPath: bin), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(
            atPath: "\(bin)/kubectl", withDestinationPath: try Self.machineKubectl.get())
        // An old kubectl, elsewhere; a folder with none; a home where kubectl may keep its discovery cache.
        let old = directory.appendingPathComponent("old-bin")
        for folder in [old, directory.appendingPathComponent("empty"), home] {
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        }
        try """
        #!/bin/sh
        echo '{"clientVersion": {"major": "1", "minor": "29", "gitVersion": "v1.29.4", "platform": "linux/amd64"}}'
        """.write(to: old.appendingPathComponent("kubectl"), atomically: false, encoding: .utf8)
        for path in [directory.path, bin, old.path, directory.appendingPathComponent("empty").path] {
            chmod(path, 0o755)
        }
        chmod(old.appendingPathComponent("kubectl").path, 0o755)
        chown(home.path, 65534, 65534)
        try Self.writeGeneration(1, in: pod)

        let statePath = directory.appendingPathComponent("state.json").path
        try JSONSerialization.data(withJSONObject: state).write(to: URL(fileURLWithPath: statePath))
        let ready = directory.appendingPathComponent("ready.json").path
        let errors = directory.appendingPathComponent("apiserver.log").path
        // In the developer's network namespace, where kubectl reaches it on 127.0.0.1; its errors to a file.
        server = try SpawnedService([
            "/bin/sh", "-c", #"exec "$@" 2> "$0""#, errors, "ip", "netns", "exec", pod.developerNamespace,
            "python3", "-B",
            Fixtures.packageRoot.appendingPathComponent("Tests/Fixtures/kube-apiserver/apiserver.py").path,
            "serve", statePath, calls, ready,
        ])
        try PodStandIn.waitUntil("the API server double") {
            if FileManager.default.fileExists(atPath: ready) { return true }
            var status: Int32 = 0
            if let server, waitpid(server.pid, &status, WNOHANG) == server.pid {
                self.server = nil
                return true
            }
            return false
        }
        guard server != nil else {
            let said = (try? String(contentsOfFile: errors, encoding: .utf8)) ?? ""
            throw FixtureError(description: "the API server double exited: \(said)")
        }
        let answer = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: ready)))
        guard let answer = answer as? [String: Any], let authority = answer["ca"] as? String,
            let servers = answer["servers"] as? [String: String], let control = answer["control"] as? String
        else { throw FixtureError(description: "unreadable \(ready)") }
        controlSocket = control
        serverPorts = servers.values.compactMap { URL(string: $0)?.port }
        try writeKubeconfig(authority: authority, servers: servers)
    }

    private static func writeGeneration(_ generation: Int, in pod: PodStandIn) throws {
        try "\(generation)\n".write(
            to: pod.root.appendingPathComponent(String(generationFile.dropFirst())), atomically: false, encoding: .utf8)
    }

    /// The ready pod of deployment/web on a pod stand-in, as the double's state or a control request has it.
    private static func readyPodObject(_ name: String, on pod: PodStandIn, created: String? = nil) -> [String: Any] {
        var object: [String: Any] = [
            "name": name, "namespace": "default", "labels": ["app": "web"], "containers": ["istio-proxy", "app"],
            "netns": pod.podNamespace, "pid": pod.containerPID, "owner": ["kind": "ReplicaSet", "name": "web-7d9f8b"],
        ]
        object["created"] = created
        return object
    }

    /// A rollout as kubectl sees one: a new ready pod of deployment/web (`replacementPod`, a pod stand-in of
    /// its own, generation 2), then the ready pod Terminating for `terminating` seconds and gone (`deletePod`).
    /// Returns once the old pod is gone.
    func rollOut(terminating: TimeInterval = 1) throws {
        let next = try PodStandIn(kubelet: true, hostname: Self.replacementPod)
        replacement = next
        try Self.writeGeneration(2, in: next)
        try control(["add_pod": Self.readyPodObject(Self.replacementPod, on: next)])
        try deletePod(terminating: terminating)
    }

    /// The ready pod deleted as a controller deletes it: Terminating for `terminating` seconds (its agents
    /// sent SIGTERM), then gone (404, its sandbox too) and its container stopped. Returns once it is gone.
    func deletePod(terminating: TimeInterval = 1) throws {
        try control([
            "delete_pod": ["namespace": "default", "name": Self.readyPod, "terminating_seconds": terminating]
        ])
        try PodStandIn.waitUntil("the pod to be deleted", timeout: terminating + 10) {
            recorded.contains { $0["removed_pod"] as? String == Self.readyPod }
        }
        pod.stopContainer()
    }

    /// One request on the double's control socket: a JSON line, answered with one; throws its error.
    private func control(_ request: [String: Any]) throws {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw FixtureError(description: "socket: errno \(errno)") }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        guard controlSocket.utf8.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw FixtureError(description: "the control socket's path is too long: \(controlSocket)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in controlSocket.utf8.enumerated() { raw[index] = byte }
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else { throw FixtureError(description: "connect \(controlSocket): errno \(errno)") }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let line = try JSONSerialization.data(withJSONObject: request) + Data("\n".utf8)
        guard line.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == line.count else {
            throw FixtureError(description: "cannot write to \(controlSocket): errno \(errno)")
        }
        var answer = Data()
        var chunk = [UInt8](repeating: 0, count: 4096)
        while !answer.contains(UInt8(ascii: "\n")) {
            let count = read(fd, &chunk, chunk.count)
            guard count > 0 else { break }
            answer.append(contentsOf: chunk[..<count])
        }
        guard (try? JSONSerialization.jsonObject(with: answer) as? [String: Any])?["ok"] as? Bool == true else {
            throw FixtureError(
                description: "the API server double refused \(request): \(String(decoding: answer, as: UTF8.self))")
        }
    }

    /// The cluster: pods on the pod stand-in, a namespace under Pod Security "baseline", users and what they
    /// may not do, the images the node has (any other fails to pull), and three API servers.
    private var state: [String: Any] {
        let created = "2026-11-27T05:00:00Z"
        return [
            "clusters": [
                "standin": ["ephemeral_containers": true],
                "legacy": ["ephemeral_containers": false],
                "spdy": ["ephemeral_containers": true, "portforward": ["websocket": false]],
                "idle": ["ephemeral_containers": true, "portforward": ["idle_timeout": Self.idleTimeout]],
            ],
            "tokens": ["dev-token": "dev", "v": "viewer", "nf": "no-forward"],
            "forbid": [
                "viewer": [["patch", "pods", "ephemeralcontainers"]],
                // kubectl asks for a WebSocket (GET) first, and falls back to SPDY (POST, create).
                "no-forward": [["get", "pods", "portforward"], ["create", "pods", "portforward"]],
            ],
            "namespaces": ["default": [:], "secure": ["pod_security": "baseline"]],
            "images": [
                Self.image: ["start_seconds": 0.2], Self.slowImage: ["start_seconds": 600],
                Self.lateImage: ["start_seconds": 0.2, "listen_delay_seconds": 2],
            ],
            "agent_binary": Fixtures.shared.sysmirror,
            "pods": [
                Self.readyPodObject(Self.readyPod, on: pod, created: created),
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
    }

    private func writeKubeconfig(authority: String, servers: [String: String]) throws {
        func cluster(_ name: String) -> [String: Any] {
            ["name": name, "cluster": ["server": servers[name] ?? "", "certificate-authority": authority]]
        }
        func context(_ name: String, cluster: String, user: String, namespace: String? = nil) -> [String: Any] {
            var context = ["cluster": cluster, "user": user]
            context["namespace"] = namespace
            return ["name": name, "context": context]
        }
        let config: [String: Any] = [
            "apiVersion": "v1", "kind": "Config", "current-context": Context.dev,
            "contexts": [
                context(Context.dev, cluster: "standin", user: "dev", namespace: "default"),
                context(Context.viewer, cluster: "standin", user: "viewer"),
                context(Context.noForward, cluster: "standin", user: "no-forward"),
                context(Context.legacy, cluster: "legacy", user: "dev"),
                context(Context.offline, cluster: "offline", user: "dev"),
                context(Context.spdy, cluster: "spdy", user: "dev"),
                context(Context.idle, cluster: "idle", user: "dev"),
                context(Context.expired, cluster: "standin", user: "expired"),
            ],
            "clusters": [
                cluster("standin"), cluster("legacy"), cluster("spdy"), cluster("idle"),
                ["name": "offline", "cluster": ["server": "https://127.0.0.1:1"]],
            ],
            "users": [
                ["name": "dev", "user": ["token": "dev-token"]], ["name": "viewer", "user": ["token": "v"]],
                ["name": "no-forward", "user": ["token": "nf"]], ["name": "expired", "user": ["token": "gone"]],
            ],
        ]
        // YAML, which kubeconfig files are, takes JSON but not its escaped slashes.
        try JSONSerialization.data(withJSONObject: config, options: .withoutEscapingSlashes).write(
            to: URL(fileURLWithPath: kubeconfig))
        chmod(kubeconfig, 0o644)
    }

    /// The folder whose `kubectl` is the machine's.
    var bin: String { directory.appendingPathComponent("bin").path }
    /// nobody's HOME for kubectl (its cache of the API's discovery documents).
    var home: URL { directory.appendingPathComponent("home") }

    /// What `sysmirror trace` runs with: the kubectl of `bin` (or `path`) first, the double's kubeconfig.
    func environment(path: String? = nil) -> [String] {
        ["PATH=\(path ?? "\(bin):/usr/local/bin:/usr/bin:/bin")", "KUBECONFIG=\(kubeconfig)", "HOME=\(home.path)"]
    }

    /// `sysmirror trace --target ...` as nobody in the developer's namespace, with the machine's kubectl
    /// first on PATH (or `path`) and the double's kubeconfig in KUBECONFIG.
    func trace(
        _ program: [String], target: String, options: [String] = [], path: String? = nil, timeout: TimeInterval = 60
    ) throws -> (Outcome, [String]) {
        let log = Fixtures.shared.path("trace-\(UUID().uuidString).log")
        defer { try? FileManager.default.removeItem(atPath: log) }
        let outcome = try Run.process(
            ["/usr/bin/env"] + environment(path: path) + [
                Fixtures.shared.sysmirror, "trace", "--log", log, "--target", target,
            ] + options + ["--"] + program, unprivileged: true, namespace: pod.developerNamespace, timeout: timeout)
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        return (outcome, text.split(separator: "\n").map(String.init))
    }

    /// `sysmirror trace ...` as `trace` runs it, left running; its output goes to `output` (or nowhere), its
    /// stderr with it or, given `errors`, there. The process is sysmirror's (each command before it execs).
    /// `machine`: another developer's network namespace (`addMachine`), rather than the first's.
    func startTrace(_ arguments: [String], output: String?, errors: String? = nil, machine: String? = nil) throws
        -> Process
    {
        let command =
            [
                "ip", "netns", "exec", machine ?? pod.developerNamespace, "setpriv", "--reuid=65534", "--regid=65534",
                "--clear-groups", "--", "/usr/bin/env",
            ] + environment() + [Fixtures.shared.sysmirror, "trace"] + arguments
        guard let errors else { return try PodStandIn.start(command, log: output) }
        return try PodStandIn.start(["/bin/sh", "-c", #"exec "$@" 2> "$0""#, errors] + command, log: output)
    }

    /// A command as nobody in the developer's namespace, with `trace`'s environment: kubectl as sysmirror
    /// runs it.
    func asDeveloper(_ command: [String]) throws -> Outcome {
        try Run.process(
            ["/usr/bin/env"] + environment() + command, unprivileged: true, namespace: pod.developerNamespace)
    }

    /// The calls the API server double saw and what its kubelet did, in order (JSON objects).
    var recorded: [[String: Any]] {
        let text = (try? String(contentsOfFile: calls, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }

    /// The pids of the kubectl port-forwards that reached the double.
    var portForwards: [Int32] {
        recorded.compactMap { ($0["forwarding"] as? [String: Any])?["pid"] as? Int }.map(Int32.init)
    }

    /// The transports port-forward connections were opened with ("websocket", "spdy"), in order.
    var portForwardTransports: [String] {
        recorded.filter { $0["event"] as? String == "open" }.compactMap { $0["portforward"] as? String }
    }

    /// The API server double's ports (on 127.0.0.1 of the developer's namespace).
    private(set) var serverPorts: [Int] = []
    private var machines: [String] = []
    private var bridges: [SpawnedService] = []

    /// A second developer's machine: a network namespace of its own, loopback only, whose 127.0.0.1 has the
    /// API server double's ports too, bridged over unix sockets to the first's (as a laptop reaches the
    /// same API server), so that the same kubeconfig works there. Returns its namespace.
    func addMachine() throws -> String {
        let machine = "sysm-dev\(machines.count + 2)-\(pod.name)"
        try PodStandIn.command(["ip", "netns", "add", machine])
        machines.append(machine)
        try PodStandIn.command(["ip", "-n", machine, "link", "set", "lo", "up"])
        for port in serverPorts {
            let bridge = directory.appendingPathComponent("\(machine)-\(port).sock").path
            bridges.append(
                try SpawnedService(
                    [
                        "ip", "netns", "exec", pod.developerNamespace, "socat", "UNIX-LISTEN:\(bridge),fork",
                        "TCP:127.0.0.1:\(port)",
                    ], ownGroup: true))
            try PodStandIn.waitUntil("the API server's bridge") { FileManager.default.fileExists(atPath: bridge) }
            bridges.append(
                try SpawnedService(
                    [
                        "ip", "netns", "exec", machine, "socat", "TCP-LISTEN:\(port),bind=127.0.0.1,reuseaddr,fork",
                        "UNIX-CONNECT:\(bridge)",
                    ], ownGroup: true))
            let listening = String(format: "0100007F:%04X 00000000:0000 0A", port)
            try PodStandIn.waitUntil("the API server's port on the second machine") {
                (try? Run.process(["ip", "netns", "exec", machine, "cat", "/proc/net/tcp"]))?.stdout.contains(listening)
                    == true
            }
        }
        return machine
    }

    func tearDown() {
        for bridge in bridges { bridge.stopGroup() }
        for machine in machines { _ = try? Run.process(["ip", "netns", "delete", machine]) }
        if let server {
            // SIGTERM: the double stops the agents it started and removes the namespaces it made.
            // SIGKILL only if that takes more than 10 s.
            kill(server.pid, SIGTERM)
            if !exits(server.pid, within: 10) { kill(server.pid, SIGKILL) }
            var status: Int32 = 0
            waitpid(server.pid, &status, 0)
        }
        // Port-forwards that outlived a failing test.
        for pid in portForwards where kill(pid, 0) == 0 { kill(pid, SIGKILL) }
        replacement?.tearDown()
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
