import Foundation
import Testing

/// Outgoing traffic and DNS from the pod stand-in's network namespace: servers on addresses that only the
/// pod's namespace has; programs traced as nobody in a namespace with only loopback. Each program also runs
/// without sysmirror, where it must fail: the traffic went through the pod.
@Suite("Outgoing traffic and DNS", .enabled(if: PodStandIn.isAvailable, "needs root for namespaces"))
final class OutgoingTests {
    let pod: PodStandIn
    let fixtures = Fixtures.shared
    typealias Service = PodStandIn.Service

    init() throws { pod = try PodStandIn(network: true) }
    deinit { pod.tearDown() }

    /// Runs `program` under trace and directly; returns the traced outcome and log.
    func traced(_ program: [String], options: [String] = []) throws -> (Outcome, [String]) {
        let direct = try pod.direct(program)
        #expect(direct.status != 0, "\(program) reached the pod without sysmirror: \(direct.stdout)")
        return try pod.trace(program, options: options)
    }

    @Test("A static Go program reaches a cluster service by its short and full names")
    func goHTTP() throws {
        for url in ["http://web:8080/", "http://web.default.svc.cluster.local:8080/"] {
            let (outcome, log) = try traced([fixtures.path("gofixture"), "get", url])
            #expect(outcome.stdout == Service.webBody, "\(url): \(outcome.stderr)")
            #expect(
                log.contains {
                    $0.contains("connect(") && $0.contains("\(Service.web):8080") && $0.contains("→ remote")
                })
            #expect(
                log.contains { $0.contains("connect(") && $0.contains("\(Service.dns):53") && $0.contains("→ remote") })
        }
    }

    @Test("curl and python3 urllib resolve through glibc and fetch from the pod")
    func glibcClients() throws {
        let (curl, log) = try traced(["curl", "-sS", "--max-time", "10", "http://web:8080/"])
        #expect(curl.stdout == Service.webBody, "\(curl.stderr)")
        // When the connection ends, the log has its bytes each way (the pod's kernel counted them).
        let end = log.first { $0.contains("connection to \(Service.web):8080 ended:") }
        #expect(end?.contains(" bytes sent, ") == true, "\(log.filter { $0.contains("close") })")
        let received = end.flatMap { $0.split(separator: " ").dropLast().last }.flatMap { Int($0) } ?? 0
        #expect(received > Service.webBody.utf8.count)
        let script =
            "import urllib.request; print(urllib.request.urlopen('http://web.default.svc.cluster.local:8080/').read().decode(), end='')"
        let (python, _) = try traced(["python3", "-c", script])
        #expect(python.stdout == Service.webBody, "\(python.stderr)")
    }

    @Test("redis-cli SET and GET against the pod's redis")
    func redis() throws {
        let (set, _) = try traced(["redis-cli", "-h", "redis", "SET", "greeting", "from the laptop"])
        #expect(set.stdout == "OK\n", "\(set.stderr)")
        let (get, _) = try traced(["redis-cli", "-h", "redis.default.svc.cluster.local", "GET", "greeting"])
        #expect(get.stdout == "from the laptop\n", "\(get.stderr)")
    }

    @Test("UDP: sendto without connect, and recvfrom reports the pod's peer, not a relay")
    func udp() throws {
        let (outcome, _) = try traced(["python3", "-c", PodStandIn.udpClient(showingPeerName: true)])
        #expect(outcome.stdout == "echo ping \(Service.echo) 7\necho pong \(Service.echo)\n", "\(outcome.stderr)")
    }

    @Test("A name with more addresses than a UDP answer holds resolves over TCP, in Go and in glibc")
    func dnsOverTCP() throws {
        let (go, goLog) = try traced([fixtures.path("gofixture"), "lookup", "many"])
        #expect(go.stdout == "\(Service.manyAddresses)\n", "\(go.stderr)")
        #expect(goLog.contains { $0.contains("connect(") && $0.contains("\(Service.dns):53") })
        let script =
            "import socket; print(len({a[4][0] for a in socket.getaddrinfo('many', 80, socket.AF_INET, socket.SOCK_STREAM)}))"
        let (python, _) = try traced(["python3", "-c", script])
        #expect(python.stdout == "\(Service.manyAddresses)\n", "\(python.stderr)")
    }

    @Test("200 concurrent connections from a Go program, every response checked")
    func manyConnections() throws {
        let (outcome, log) = try traced([fixtures.path("gofixture"), "gets", "200", "http://\(Service.web):8080/"])
        #expect(outcome.stdout == "ok 200\n", "\(outcome.stderr)")
        #expect(
            log.filter { $0.contains("connect(") && $0.contains("\(Service.web):8080") && $0.contains("→ remote") }
                .count == 200)
    }

    @Test(
        "The kernel's own answers: a refusal from the pod, EISCONN, a mapped address, a short address, another family; loopback and --no-outgoing stay local"
    )
    func edges() throws {
        let script = """
            import errno, socket
            def attempt(family, address):
                s = socket.socket(family, socket.SOCK_STREAM)
                try:
                    s.connect(address)
                    return 'connected'
                except OSError as error:
                    return errno.errorcode[error.errno]
            print(attempt(socket.AF_INET, ('\(Service.web)', 9)))
            s = socket.socket(); s.connect(('\(Service.web)', 8080))
            try:
                s.connect(('\(Service.web)', 8080))
            except OSError as error:
                print(errno.errorcode[error.errno])
            print(s.getpeername()[0], s.getsockname()[0] != '127.0.0.1')
            print(attempt(socket.AF_INET6, ('::ffff:\(Service.web)', 8080)))
            print(attempt(socket.AF_INET, ('127.0.0.1', 9)))
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            def raw(address, length):
                s = socket.socket()
                libc.connect(s.fileno(), ctypes.create_string_buffer(address, 16), length)
                return errno.errorcode[ctypes.get_errno()]
            web = bytes([2, 0, 0x1f, 0x90, 10, 96, 0, 20]) + bytes(8)
            print(raw(web, 8), raw(bytes([99, 0]) + web[2:], 16))
            """
        let (outcome, log) = try pod.trace(["python3", "-c", script])
        #expect(
            outcome.stdout
                == "ECONNREFUSED\nEISCONN\n\(Service.web) True\nconnected\nECONNREFUSED\nEINVAL EAFNOSUPPORT\n",
            "\(outcome.stderr)")
        #expect(log.contains { $0.contains("127.0.0.1:9") && $0.contains("→ local") })
        let (local, _) = try pod.trace(
            ["curl", "-sS", "--max-time", "3", "http://\(Service.web):8080/"], options: ["--no-outgoing"])
        #expect(local.status != 0)
    }

    @Test("A connect behaves as the kernel's: non-blocking, options and close-on-exec kept, half-close")
    func connectSemantics() throws {
        let script = """
            import errno, select, socket
            def nonblocking(port):
                s = socket.socket(); s.setblocking(False)
                code = s.connect_ex(('\(Service.web)', port))
                select.select([], [s], [], 5)
                return errno.errorcode.get(code, code), s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            print(*nonblocking(8080), *nonblocking(9))
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 77)
            s.connect(('\(Service.web)', 8080))
            inheritable = socket.socket(); inheritable.set_inheritable(True)
            inheritable.connect(('\(Service.web)', 8080))
            print(s.get_inheritable(), inheritable.get_inheritable())
            print(s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                  s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE))
            s.sendall(b'GET /index.html HTTP/1.0\\r\\n\\r\\n')
            s.shutdown(socket.SHUT_WR)
            answer = b''
            while chunk := s.recv(4096): answer += chunk
            print(answer.split(b'\\r\\n\\r\\n', 1)[1].decode(), end='')
            """
        let (outcome, _) = try pod.trace(["python3", "-c", script])
        #expect(
            outcome.stdout == "EINPROGRESS 0 EINPROGRESS \(ECONNREFUSED)\nFalse True\n1 1 77\n\(Service.webBody)",
            "\(outcome.stderr)")
    }

    @Test("With the agent gone, open connections are reset and new remote connects fail at once")
    func agentGone() throws {
        let marker = fixtures.path("connected-\(pod.name)")
        let script = """
            import errno, os, socket, time
            s = socket.create_connection(('\(Service.web)', 8080), timeout=5)
            open('\(marker)', 'w').close()
            while os.path.exists('\(marker)'): time.sleep(0.05)
            try:
                print('open one:', s.recv(10) or 'end')
            except OSError as error:
                print('open one:', errno.errorcode.get(error.errno, error))
            started = time.monotonic()
            try:
                socket.create_connection(('\(Service.web)', 8080), timeout=5)
                print('connected')
            except OSError as error:
                print(error.errno in (111, 101), time.monotonic() - started < 2)
            """
        let pod = self.pod
        DispatchQueue.global().async {
            try? PodStandIn.waitUntil("the first connection", timeout: 20) {
                FileManager.default.fileExists(atPath: marker)
            }
            pod.killAgent()
            try? FileManager.default.removeItem(atPath: marker)
        }
        let (outcome, log) = try pod.trace(["python3", "-c", script], timeout: 30)
        #expect(outcome.stdout == "open one: ECONNRESET\nTrue True\n", "\(outcome.stderr)")
        #expect(log.contains { $0.contains("connection to \(Service.web):8080 reset:") })
    }
}
