import Foundation
import Testing

/// A pod without a cluster (design.md, "Testing without a cluster"): a network namespace for the pod, in
/// it a "container" (busybox sleep, chrooted into its own root with `unshare --root`, with its own UTS
/// namespace, hostname and environment), and a real `sysmirror agent --pid` serving it. Programs run under
/// `sysmirror trace` as nobody in a second namespace that has only loopback, reaching the agent through a
/// unix socket. Needs root (CI runs as root); everything is removed by `tearDown`, also after a failure.
final class PodStandIn: @unchecked Sendable {  // processes are set up before tests use it
    static let hostname = "web-7d9f8b-x2x4q"
    static let environment = [
        "DB_HOST": "db.default.svc.cluster.local", "GREETING": "hello from the pod", "PATH": "/pod/bin",
        "HOME": "/home/pod",
    ]
    static let token = "tests-token-0123456789abcdef"
    static var isAvailable: Bool { getuid() == 0 }

    let name: String
    /// The container's hostname (`PodStandIn.hostname` unless given).
    let hostname: String
    let podNamespace: String
    let developerNamespace: String
    /// With `incoming`: the pod's clients, joined to the pod by a veth pair.
    let clientNamespace: String
    /// The container's root folder (also the pod's file system as tests see it from outside).
    let root: URL
    let socket: String
    let tokenFile: String
    let agentLog: String
    private(set) var container: Process?
    private(set) var agent: Process?
    /// The pod's services (`network`), each on an address only the pod's namespace has.
    private(set) var services: [SpawnedService] = []
    private static let counter = Counter()

    /// The cluster's addresses, on the pod namespace's loopback.
    enum Service {
        static let dns = "10.96.0.10", web = "10.96.0.20", redis = "10.96.0.30", echo = "10.96.0.40"
        static let webBody = "hello from the pod's web service\n"
        /// A name with more addresses than a UDP answer holds: resolvers must retry over TCP.
        static let manyAddresses = 120
    }

    /// The container's main process, when it has a process namespace of its own (PID 1 there).
    private(set) var containerInit: Int32 = 0

    /// - Parameters:
    ///   - network: also start the pod's services: a name server (dnsmasq, cluster names, no upstream: other
    ///     names are refused), an
    ///     HTTP server, redis and a UDP echo.
    ///   - kubelet: the container gets a process namespace of its own, as under a kubelet, and no agent is
    ///     started: the cluster stand-in starts one when asked (KubernetesTests).
    ///   - incoming: a client namespace joined to the pod by a veth pair, and the pod's application: an HTTP
    ///     server on :8080 answering "pod CLIENT-IP" (gofixture serve).
    ///   - hostname: another pod's name (a second pod of a cluster stand-in).
    init(network: Bool = false, kubelet: Bool = false, incoming: Bool = false, hostname: String = PodStandIn.hostname)
        throws
    {
        let fixtures = Fixtures.shared
        name = "\(getpid())-\(Self.counter.next())"
        self.hostname = hostname
        podNamespace = "sysm-pod-\(name)"
        developerNamespace = "sysm-dev-\(name)"
        clientNamespace = "sysm-cli-\(name)"
        root = fixtures.directory.appendingPathComponent("pod-\(name)")
        socket = fixtures.path("agent-\(name).sock")
        tokenFile = fixtures.path("token-\(name)")
        agentLog = fixtures.path("agent-\(name).log")
        do {
            try makeRoot()
            try Self.command(["ip", "netns", "add", podNamespace])
            try Self.command(["ip", "netns", "add", developerNamespace])
            try Self.command(["ip", "-n", podNamespace, "link", "set", "lo", "up"])
            try Self.command(["ip", "-n", developerNamespace, "link", "set", "lo", "up"])
            if network { try startServices() }
            if incoming { try startApplication() }
            try startContainer(ownProcessNamespace: kubelet)
            if !kubelet { try startAgent() }
        } catch {
            tearDown()
            throw error
        }
    }

    /// The container's files: a config, a service-account token, a directory, a symlink that tries to
    /// leave the root, and the pod's own /etc.
    private func makeRoot() throws {
        let files = [
            "config/app.yaml": "listen: 8080\nmode: pod\n",
            "var/run/secrets/kubernetes.io/serviceaccount/token": "eyJhbGciOiJSUzI1NiJ9.pod-token",
            "data/a.txt": "alpha\n", "data/b.txt": "bravo bravo\n", "data/nested/c.txt": "charlie\n",
            "etc/hostname": "\(hostname)\n", "etc/shadow": "pod-shadow-file\n",
            "etc/hosts": "127.0.0.1 localhost\n10.96.0.99 hosts-only.example\n",
            "etc/resolv.conf":
                "nameserver \(Service.dns)\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
        ]
        for (path, content) in files {
            let url = root.appendingPathComponent(path)
            try FileManager.default.createDirectory(
                at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try content.write(to: url, atomically: false, encoding: .utf8)
        }
        try FileManager.default.createSymbolicLink(
            atPath: root.appendingPathComponent("config/escape").path, withDestinationPath: "/../../etc/shadow")
        try FileManager.default.createDirectory(
            at: root.appendingPathComponent("bin"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(
            atPath: "/bin/busybox", toPath: root.appendingPathComponent("bin/busybox").path)
        _ = try Fixtures.shared.readableFile("token-\(name)", Self.token)
    }

    private func startServices() throws {
        for address in [Service.dns, Service.web, Service.redis, Service.echo] {
            try Self.command(["ip", "-n", podNamespace, "addr", "add", "\(address)/32", "dev", "lo"])
        }
        let web = root.appendingPathComponent("srv/web")
        try FileManager.default.createDirectory(at: web, withIntermediateDirectories: true)
        try Service.webBody.write(to: web.appendingPathComponent("index.html"), atomically: false, encoding: .utf8)
        let many = (1...Service.manyAddresses).map {
            "10.96.\(1 + $0 / 250).\($0 % 250) many.default.svc.cluster.local"
        }
        let hosts = root.appendingPathComponent("srv/dns-hosts")
        try (many.joined(separator: "\n") + "\n").write(to: hosts, atomically: false, encoding: .utf8)
        let inPod = ["ip", "netns", "exec", podNamespace]
        services = [
            try SpawnedService(
                inPod + [
                    "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--user=root",
                    "--listen-address=\(Service.dns)", "--bind-interfaces", "--pid-file=", "--addn-hosts=\(hosts.path)",
                    // As CoreDNS answers in a cluster: names under cluster.local it does not know do not exist
                    // (NXDOMAIN, NODATA for a known name's AAAA), and answers live 5 s.
                    "--local=/cluster.local/", "--local-ttl=5",
                    "--address=/web.default.svc.cluster.local/\(Service.web)",
                    "--address=/redis.default.svc.cluster.local/\(Service.redis)",
                    "--address=/echo.default.svc.cluster.local/\(Service.echo)",
                ]),
            // http.server's own listen backlog (5) would drop the SYNs of 200 connections made at once.
            try SpawnedService(
                inPod + [
                    "python3", "-c",
                    """
                    import http.server
                    class Server(http.server.ThreadingHTTPServer):
                        request_queue_size = 1024
                        daemon_threads = True
                    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory='\(web.path)', **k)
                    Server(('\(Service.web)', 8080), handler).serve_forever()
                    """,
                ]),
            try SpawnedService(
                inPod + [
                    "redis-server", "--bind", Service.redis, "--port", "6379", "--save", "", "--appendonly", "no",
                    "--protected-mode", "no",
                ]),
            try SpawnedService(
                inPod + [
                    "python3", "-c",
                    "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('\(Service.echo)', 7))\nwhile True:\n    data, peer = s.recvfrom(65536)\n    s.sendto(b'echo ' + data, peer)\n",
                ]),
            // TCP :7 answers once its client's input ends (a half-close): "got N bytes".
            try SpawnedService(inPod + ["python3", "-c", Self.answeringAtEndOfInput(Service.echo, 7)]),
        ]
        // Listening once the pod's /proc/net shows the ports: 53/udp and tcp, 8080, 6379, 7/tcp and udp.
        try Self.waitUntil("the pod's services") {
            let tcp = (try? Run.process(inPod + ["cat", "/proc/net/tcp"], directory: root).stdout) ?? ""
            let udp = (try? Run.process(inPod + ["cat", "/proc/net/udp"], directory: root).stdout) ?? ""
            return ["0A00600A:0035", "1400600A:1F90", "1E00600A:18EB", "2800600A:0007"].allSatisfy(tcp.contains)
                && ["0A00600A:0035", "2800600A:0007"].allSatisfy(udp.contains)
        }
    }

    /// Python: serves HOST:PORT and answers each connection "PREFIXgot N bytes" once its client's input
    /// ends (a half-close), then closes it; `once`: one connection, then it exits.
    static func answeringAtEndOfInput(_ host: String, _ port: Int, prefix: String = "", once: Bool = false) -> String {
        """
        import socket, threading
        def serve(c):
            got = 0
            while True:
                data = c.recv(65536)
                if not data:
                    break
                got += len(data)
            c.sendall(b'\(prefix)got %d bytes' % got)
            c.close()
        s = socket.create_server(('\(host)', \(port)))
        while True:
            c = s.accept()[0]
            if \(once ? "True" : "False"):
                serve(c)
                break
            threading.Thread(target=serve, args=(c,), daemon=True).start()
        """
    }

    /// Python: a datagram to the pod's UDP echo with sendto, its answer and sender from recvfrom; then a
    /// socket connected to `echo` by name, its answer (and, `showingPeerName`, its getpeername).
    static func udpClient(showingPeerName: Bool) -> String {
        """
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.sendto(b'ping', ('\(Service.echo)', 7))
        data, peer = s.recvfrom(100)
        print(data.decode(), peer[0], peer[1])
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.settimeout(5)
        c.connect((socket.gethostbyname('echo'), 7))
        c.send(b'pong')
        print(c.recv(100).decode()\(showingPeerName ? ", c.getpeername()[0]" : ""))
        """
    }

    /// Python: connects to HOST:PORT, sends 1,000 bytes, ends its output (a half-close) and prints what
    /// comes back, to its end.
    static func halfClosingClient(_ host: String, _ port: Int) -> String {
        """
        import socket
        c = socket.create_connection(('\(host)', \(port)), timeout=10)
        c.sendall(b'x' * 1000)
        c.shutdown(socket.SHUT_WR)
        answer = b''
        while True:
            data = c.recv(4096)
            if not data:
                break
            answer += data
        print(answer.decode(errors='replace'))
        """
    }

    /// The pod's address on the veth pair, and its client's.
    static let podAddress = "10.250.0.1", clientAddress = "10.250.0.2"

    private func startApplication() throws {
        try Self.command(["ip", "netns", "add", clientNamespace])
        try Self.command(["ip", "-n", clientNamespace, "link", "set", "lo", "up"])
        try Self.command([
            "ip", "-n", podNamespace, "link", "add", "vpod", "type", "veth", "peer", "name", "vcli", "netns",
            clientNamespace,
        ])
        for (namespace, device, address) in [
            (podNamespace, "vpod", Self.podAddress), (clientNamespace, "vcli", Self.clientAddress),
        ] {
            try Self.command(["ip", "-n", namespace, "addr", "add", "\(address)/24", "dev", device])
            try Self.command(["ip", "-n", namespace, "link", "set", device, "up"])
        }
        services.append(
            try SpawnedService([
                "ip", "netns", "exec", podNamespace, Fixtures.shared.path("gofixture"), "serve", "pod", "0.0.0.0:8080",
            ]))
        try Self.waitUntil("the pod's application") {
            (try? client(["GET /ready"]))?.first?.hasPrefix("pod ") == true
        }
    }

    /// HTTP/1.1 requests from the client namespace to the pod's :8080, in order on one keep-alive
    /// connection: each is "METHOD PATH" and optionally a header line after a "|". Returns each answer's
    /// body, trimmed, and the client's port.
    func client(_ requests: [String], connection: String? = nil) throws -> [String] {
        let script = """
            import http.client, sys
            c = http.client.HTTPConnection('\(Self.podAddress)', 8080, timeout=5)
            for line in sys.argv[1:]:
                request, _, header = line.partition('|')
                method, path = request.split(' ')
                headers = dict([header.split(': ')]) if header else {}
                body = b'x' * 70000 if method == 'POST' else None
                c.request(method, path, body=body, headers=headers)
                answer = c.getresponse().read().decode().strip()
                print(answer + ' ' + str(c.sock.getsockname()[1]), flush=True)
            """
        let result = try Run.process(
            ["ip", "netns", "exec", clientNamespace, "python3", "-c", script] + requests,
            directory: Fixtures.shared.directory)
        guard result.status == 0 else { throw FixtureError(description: "the client failed: \(result.stderr)") }
        return result.stdout.split(separator: "\n").map(String.init)
    }

    /// A program for the developer's side: Python on 127.0.0.1:8080, one blocking accept (served on a thread
    /// of sysmirror's), one answer "local CLIENT-IP" (the address accept gave it), then the listening socket
    /// closes and the program sleeps `seconds`.
    static func answeringOnce(thenSleeping seconds: Int = 0) -> [String] {
        let script = """
            import socket, time
            s = socket.socket()
            s.bind(('127.0.0.1', 8080))
            s.listen(8)
            c, peer = s.accept()
            c.recv(65536)
            body = ('local ' + peer[0] + '\\n').encode()
            c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n' % len(body) + body)
            c.close()
            s.close()
            time.sleep(\(seconds))
            """
        return ["/usr/bin/python3", "-c", script]
    }

    /// `sysmirror trace --agent` as nobody in the developer's namespace, left running: a server.
    func startTrace(_ program: [String], options: [String], output: String, log: String, agentAddress: String? = nil)
        throws -> Process
    {
        var command = [
            Fixtures.shared.sysmirror, "trace", "--log", log, "--agent", agentAddress ?? "unix:\(socket)",
            "--token-file",
            tokenFile,
        ]
        command += options + ["--"] + program
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--"] + command
        return try Self.start(["ip", "netns", "exec", developerNamespace] + command, log: output)
    }

    private func startContainer(ownProcessNamespace: Bool) throws {
        let environment = Self.environment.map { "\($0.key)=\($0.value)" }.sorted()
        container = try Self.start(
            ["ip", "netns", "exec", podNamespace, "/usr/bin/env", "-i"] + environment + [
                "/usr/bin/unshare", "--mount", "--uts",
            ] + (ownProcessNamespace ? ["--pid", "--fork"] : []) + [
                "--root=\(root.path)", "/bin/busybox", "sh", "-c",
                "/bin/busybox hostname \(hostname) && exec /bin/busybox sleep 600",
            ], log: nil)
        if ownProcessNamespace {
            try Self.waitUntil("the container's main process") {
                let unshare = container!.processIdentifier
                let children = try? String(
                    contentsOfFile: "/proc/\(unshare)/task/\(unshare)/children", encoding: .utf8)
                containerInit = children.flatMap { Int32($0.split(separator: " ").first ?? "") } ?? 0
                return containerInit > 0
            }
        }
        // Ready once the container runs in its own root.
        try Self.waitUntil("the container to start") {
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(containerPID)/root")) == root.path
                && (try? String(contentsOfFile: "/proc/\(containerPID)/comm", encoding: .utf8)) == "busybox\n"
        }
        try Self.waitUntil("the container's hostname") {
            let result = try? Run.process(["nsenter", "-t", "\(containerPID)", "--uts", "hostname"], directory: root)
            return result?.stdout == "\(hostname)\n"
        }
    }

    /// The container's main process, as this machine numbers it.
    var containerPID: Int32 { containerInit > 0 ? containerInit : container?.processIdentifier ?? 0 }

    /// Starts (or restarts) the agent in the pod's namespace, and hands its socket to the unprivileged user
    /// who runs the traced programs.
    func startAgent(idleTimeout: Int = 120, arguments: [String] = []) throws {
        try? FileManager.default.removeItem(atPath: socket)
        agent = try Self.start(
            [
                "ip", "netns", "exec", podNamespace, Fixtures.shared.sysmirror, "agent", "--listen", "unix:\(socket)",
                "--pid", "\(containerPID)", "--token-file", tokenFile, "--idle-timeout", "\(idleTimeout)",
            ] + arguments, log: agentLog)
        try Self.waitUntil("the agent's sockets") {
            FileManager.default.fileExists(atPath: socket)
                && FileManager.default.fileExists(atPath: socket + ".sockets")
        }
        try Self.command(["chown", "65534:65534", socket, socket + ".sockets"])
    }

    /// Ends the container and whatever runs in its process namespace (an agent a cluster stand-in started
    /// there too), as a kubelet does for a deleted pod; `tearDown` then has no process of it left to end.
    func stopContainer() {
        if containerInit > 0 { kill(containerInit, SIGKILL) }
        containerInit = 0
        guard let container, container.isRunning else { return }
        kill(container.processIdentifier, SIGKILL)
        container.waitUntilExit()
    }

    /// Another agent in the pod, as a second developer's ephemeral container holds one: the pod's network
    /// namespace, a process namespace of its own (where it is PID 1, as agents in containers often are) and a
    /// socket of its own, which `address` names for `trace --agent`.
    func startExtraAgent() throws -> (process: Process, address: String) {
        let number = extraAgents.count + 1
        let path = Fixtures.shared.path("agent-\(name)-\(number).sock")
        let process = try Self.start(
            [
                "ip", "netns", "exec", podNamespace, "unshare", "--pid", "--fork", "--kill-child",
                Fixtures.shared.sysmirror, "agent", "--listen", "unix:\(path)", "--pid", "\(containerPID)",
                "--token-file", tokenFile, "--idle-timeout", "120",
            ], log: Fixtures.shared.path("agent-\(name)-\(number).log"))
        extraAgents.append((process, path))
        try Self.waitUntil("the extra agent's sockets") {
            FileManager.default.fileExists(atPath: path) && FileManager.default.fileExists(atPath: path + ".sockets")
        }
        try Self.command(["chown", "65534:65534", path, path + ".sockets"])
        return (process, "unix:\(path)")
    }

    private var extraAgents: [(process: Process, socket: String)] = []

    /// The extra agents themselves (each the child of its `unshare`), as this machine numbers them.
    var extraAgentPIDs: [Int32] {
        extraAgents.compactMap { extra in
            let unshare = extra.process.processIdentifier
            let children = try? String(contentsOfFile: "/proc/\(unshare)/task/\(unshare)/children", encoding: .utf8)
            return children.flatMap { Int32($0.split(separator: " ").first ?? "") }
        }
    }

    /// Kills the agent with SIGKILL, as a crash would.
    func killAgent() {
        guard let agent else { return }
        kill(agent.processIdentifier, SIGKILL)
        agent.waitUntilExit()
    }

    /// `sysmirror trace --agent` as nobody in the developer's namespace; returns the outcome and log lines.
    /// `agentAddress`: the agent's address when not its unix socket (an agent on TCP).
    func trace(
        _ program: [String], options: [String] = [], tokenFile: String? = nil, agentAddress: String? = nil,
        environment: [String: String] = [:], stdin: String? = nil, directory: URL? = nil, timeout: TimeInterval = 60
    ) throws -> (Outcome, [String]) {
        let log = Fixtures.shared.path("trace-\(UUID().uuidString).log")
        defer { try? FileManager.default.removeItem(atPath: log) }
        let outcome = try Run.process(
            [
                Fixtures.shared.sysmirror, "trace", "--log", log, "--agent", agentAddress ?? "unix:\(socket)",
                "--token-file", tokenFile ?? self.tokenFile,
            ] + options + ["--"] + program,
            environment: environment, stdin: stdin, unprivileged: true, namespace: developerNamespace,
            timeout: timeout)
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        return (outcome, text.split(separator: "\n").map(String.init))
    }

    /// The same program without sysmirror, in the same place: it must not see the pod.
    func direct(_ program: [String]) throws -> Outcome {
        try Run.process(program, unprivileged: true, namespace: developerNamespace)
    }

    var agentLogText: String { (try? String(contentsOfFile: agentLog, encoding: .utf8)) ?? "" }

    func tearDown() {
        for service in services { service.stop() }
        // First the container's own PID 1 (only SIGKILL ends it from outside): while it runs it holds what
        // Foundation's Process watches of its parent, which would then never be seen to exit.
        if containerInit > 0 { kill(containerInit, SIGKILL) }
        for process in [agent, container].compactMap({ $0 }) + extraAgents.map(\.process) where process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        for namespace in [podNamespace, developerNamespace, clientNamespace] {
            _ = try? Run.process(["ip", "netns", "delete", namespace], directory: Fixtures.shared.directory)
        }
        for path in [root.path, socket, tokenFile, agentLog] + extraAgents.map(\.socket) {
            try? FileManager.default.removeItem(atPath: path)
        }
    }

    static func command(_ arguments: [String]) throws {
        let result = try Run.process(arguments, directory: Fixtures.shared.directory)
        guard result.status == 0 else {
            throw FixtureError(description: "\(arguments.joined(separator: " ")) failed: \(result.stderr)")
        }
    }

    /// Starts a long-running process; its output goes to `log` (or nowhere).
    static func start(_ arguments: [String], log: String?) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [Fixtures.shared.path("unblocked")] + arguments
        process.currentDirectoryURL = Fixtures.shared.directory
        process.standardInput = FileHandle.nullDevice
        if let log {
            FileManager.default.createFile(atPath: log, contents: nil)
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
            process.standardOutput = handle
            process.standardError = handle
        } else {
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
        }
        try process.run()
        return process
    }

    static func waitUntil(_ what: String, timeout: TimeInterval = 30, _ condition: () -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while !condition() {
            guard Date() < deadline else { throw FixtureError(description: "timed out waiting for \(what)") }
            usleep(10_000)
        }
    }

    final class Counter: @unchecked Sendable {
        private var value = 0
        private let lock = NSLock()
        func next() -> Int {
            lock.withLock {
                value += 1; return value
            }
        }
    }
}

/// A server started with posix_spawn rather than Foundation's Process: Process watches a socket its child
/// inherits, and a daemon that closes every inherited descriptor at start (dnsmasq) looks to it like an
/// exit it then waits for, forever.
final class SpawnedService: @unchecked Sendable {  // pid set once
    let pid: pid_t

    /// `ownGroup`: in a process group of its own, whose every process `stopGroup` ends (a forking server's
    /// children too, including one forked while it is being stopped).
    init(_ arguments: [String], ownGroup: Bool = false) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        if ownGroup {
            posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP))
            posix_spawnattr_setpgroup(&attributes, 0)
        }
        for fd: Int32 in [0, 1, 2] { posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", O_RDWR, 0) }
        // Nothing but 0-2 is inherited (Tests/Fixtures/unblocked.c says why).
        let command = [Fixtures.shared.path("unblocked"), "--close-fds"] + arguments
        let argv = command.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let result = posix_spawnp(&pid, command[0], &actions, &attributes, argv, environ)
        guard result == 0 else { throw FixtureError(description: "cannot start \(arguments[0]): \(result)") }
        self.pid = pid
    }

    func stop() {
        kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
    }

    /// Ends every process of its group (started with `ownGroup`) and waits, up to 5 s, until none is left.
    func stopGroup() {
        kill(-pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        let deadline = Date().addingTimeInterval(5)
        while kill(-pid, 0) == 0 && Date() < deadline {
            kill(-pid, SIGKILL)
            usleep(1_000)
        }
    }
}
