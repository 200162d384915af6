import Foundation
import Testing

/// UDP and DNS in a cluster session: the agent on TCP reached through a port-forward stand-in
/// (ForwardedAgent), which cannot pass sockets, so datagrams and lookups travel on the link. Every kind of
/// resolver the issue names, each program also run without sysmirror, where it must fail.
@Suite("UDP and DNS through a port-forward", .enabled(if: PodStandIn.isAvailable, "needs root for namespaces"))
final class ClusterLinkTests {
    let forwarded: ForwardedAgent
    var pod: PodStandIn { forwarded.pod }
    let fixtures = Fixtures.shared
    typealias Service = PodStandIn.Service

    init() throws { forwarded = try ForwardedAgent(podWithNetwork: true) }
    deinit { forwarded.stop() }

    func traced(_ program: [String], checkDirect: Bool = true) throws -> (Outcome, [String]) {
        if checkDirect {
            let direct = try pod.direct(program)
            #expect(direct.status != 0 || direct.stdout.isEmpty, "\(program) reached the pod without sysmirror")
        }
        return try pod.trace(program, agentAddress: forwarded.address)
    }

    @Test("UDP from Python: sendto and recvfrom with the pod peer's address, and a connected socket")
    func pythonUDP() throws {
        // getpeername names sysmirror's relay here (docs/kubernetes.md, "Limits"): not printed.
        let (outcome, log) = try traced(["python3", "-c", PodStandIn.udpClient(showingPeerName: false)])
        #expect(outcome.stdout == "echo ping \(Service.echo) 7\necho pong\n", "\(outcome.stderr)")
        #expect(log.contains { $0.contains("recvfrom(") && $0.contains("→ remote") })
    }

    @Test("UDP with sendmsg and recvmsg (as Go's WriteMsgUDP and ReadMsgUDP, and libuv): the pod peer's address")
    func messageUDP() throws {
        let script = """
            import socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(5)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
            print(s.sendmsg([b'pi', b'ng'], [], 0, ('\(Service.echo)', 7)))
            data, control, flags, peer = s.recvmsg(100, socket.CMSG_SPACE(4))
            print(data.decode(), peer[0], peer[1], [(c[0], c[1]) for c in control], flags & socket.MSG_TRUNC)
            s.sendmsg([b'a longer one'], [], 0, ('\(Service.echo)', 7))
            data, control, flags, peer = s.recvmsg(6)
            print(data.decode(), peer[0], flags & socket.MSG_TRUNC != 0)
            buffers = [bytearray(3), bytearray(20)]
            s.sendmsg([b'scatter'], [], 0, ('\(Service.echo)', 7))
            count, control, flags, peer = s.recvmsg_into(buffers)
            print(count, bytes(buffers[0]).decode(), bytes(buffers[1][:count - 3]).decode(), peer[0])
            """
        let (outcome, log) = try traced(["python3", "-c", script])
        #expect(
            outcome.stdout == """
                4
                echo ping \(Service.echo) 7 [(0, 1)] 0
                echo a \(Service.echo) True
                12 ech o scatter \(Service.echo)

                """, "\(outcome.stderr)")
        #expect(log.contains { $0.contains("recvmsg(") && $0.contains("→ remote") })
        #expect(log.contains { $0.contains("sendmsg(") && $0.contains("→ remote") })
    }

    @Test("UDP from a static Go program and from socat")
    func goAndSocatUDP() throws {
        let (go, _) = try traced([fixtures.path("gofixture"), "udp", "\(Service.echo):7", "from go"])
        #expect(go.stdout == "echo from go\n", "\(go.stderr)")
        let (socat, _) = try pod.trace(
            ["socat", "-T", "5", "-t", "5", "-", "UDP:echo.default.svc.cluster.local:7"],
            agentAddress: forwarded.address,
            stdin: "from socat\n")
        #expect(socat.stdout == "echo from socat\n", "\(socat.stderr)")
    }

    @Test("Lookups of short and full names: glibc, Go, musl and busybox, each answered by the pod's DNS")
    func resolvers() throws {
        let script = """
            import socket
            for name in ['web', 'web.default.svc.cluster.local', 'redis.default', 'web']:
                print(name, sorted({a[4][0] for a in socket.getaddrinfo(name, 80, socket.AF_INET)}))
            """
        let (glibc, log) = try traced(["python3", "-c", script])
        #expect(
            glibc.stdout == """
                web ['\(Service.web)']
                web.default.svc.cluster.local ['\(Service.web)']
                redis.default ['\(Service.redis)']
                web ['\(Service.web)']

                """, "\(glibc.stderr)")
        #expect(log.contains { $0.contains("\(Service.dns):53") && $0.contains("→ remote") })
        for name in ["web", "web.default.svc.cluster.local"] {
            let (go, _) = try traced([fixtures.path("gofixture"), "lookup", name])
            #expect(go.stdout == "1\n", "Go, \(name): \(go.stderr)")
        }
        let (musl, _) = try traced([fixtures.path("musl-lookup"), "web", "echo.default.svc.cluster.local"])
        #expect(musl.stdout == "web 1\necho.default.svc.cluster.local 1\n", "\(musl.stderr)")
        // Without the file cache, sysmirror reads the pod's search list itself.
        let (uncached, _) = try pod.trace(
            ["python3", "-c", "import socket; print(socket.getaddrinfo('web', 80, socket.AF_INET)[0][4][0])"],
            options: ["--fs-cache", "off"], agentAddress: forwarded.address)
        #expect(uncached.stdout == "\(Service.web)\n", "\(uncached.stderr)")
        let (busybox, _) = try traced(["/bin/busybox", "nslookup", "web.default.svc.cluster.local"])
        #expect(busybox.stdout.contains("Address: \(Service.web)"), "\(busybox.stdout)\(busybox.stderr)")
    }

    @Test("An answer too large for UDP: glibc and Go retry over TCP and get every address")
    func truncatedAnswer() throws {
        let (go, _) = try traced([fixtures.path("gofixture"), "lookup", "many"])
        #expect(go.stdout == "\(Service.manyAddresses)\n", "\(go.stderr)")
        let script =
            "import socket; print(len({a[4][0] for a in socket.getaddrinfo('many', 80, socket.AF_INET, socket.SOCK_STREAM)}))"
        let (python, log) = try traced(["python3", "-c", script])
        #expect(python.stdout == "\(Service.manyAddresses)\n", "\(python.stderr)")
        #expect(
            log.contains { $0.contains("connect(") && $0.contains("\(Service.dns):53") && $0.contains("pod's DNS") })
    }

    @Test("A name the pod's DNS says does not exist fails at once, in glibc, Go and musl")
    func negativeAnswers() throws {
        let started = Date()
        let script = """
            import socket
            try:
                socket.getaddrinfo('nowhere.default.svc.cluster.local', 80)
                print('found')
            except socket.gaierror as error:
                print('not found')
            """
        let (glibc, _) = try traced(["python3", "-c", script], checkDirect: false)
        #expect(glibc.stdout == "not found\n", "\(glibc.stderr)")
        let (go, _) = try traced(
            [fixtures.path("gofixture"), "lookup", "nowhere.default.svc.cluster.local"], checkDirect: false)
        #expect(go.status != 0 && go.stderr.contains("no such host"), "\(go.stdout)\(go.stderr)")
        let (musl, _) = try traced(
            [fixtures.path("musl-lookup"), "nowhere.default.svc.cluster.local"], checkDirect: false)
        #expect(musl.stdout.hasPrefix("nowhere.default.svc.cluster.local error:"), "\(musl.stdout)")
        // A resolver that waited for its timeout (5 s per try) would take far longer.
        #expect(Date().timeIntervalSince(started) < 15)
    }

    @Test("200 concurrent connections by name from a Go program, every response checked")
    func manyConnections() throws {
        let (outcome, _) = try traced([fixtures.path("gofixture"), "gets", "200", "http://web:8080/"])
        #expect(outcome.stdout == "ok 200\n", "\(outcome.stderr)")
    }

    @Test("Connections share the link: one whose reader lags holds up only itself, and each carries every byte")
    func laggingReader() throws {
        // 24 MiB: many windows' worth, so the pod's side must stop and go again many times.
        let big = pod.root.appendingPathComponent("srv/web/big.bin")
        try Data((0..<(24 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 13) }).write(to: big)
        let digest = try Run.process(["sha256sum", big.path]).stdout.prefix(64)
        let script = """
            import hashlib, socket, time
            lagging = socket.create_connection(('\(Service.web)', 8080))
            lagging.sendall(b'GET /big.bin HTTP/1.0\\r\\n\\r\\n')
            time.sleep(0.3)  # its answer fills its window, unread
            for i in range(20):
                c = socket.create_connection(('\(Service.web)', 8080))
                c.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')
                answer = b''
                while chunk := c.recv(65536):
                    answer += chunk
                assert answer.endswith(b"\(Service.webBody.dropLast())\\n"), answer
            print('20 answered')
            counter = socket.create_connection(('\(Service.echo)', 7))
            counter.sendall(bytes(range(256)) * (32 << 10))
            counter.shutdown(socket.SHUT_WR)
            print(counter.recv(100).decode())
            answer = b''
            while chunk := lagging.recv(1 << 16):
                answer += chunk
            body = answer.split(b'\\r\\n\\r\\n', 1)[1]
            print(len(body), hashlib.sha256(body).hexdigest())
            """
        let (outcome, _) = try traced(["python3", "-c", script], checkDirect: false)
        #expect(outcome.stdout == "20 answered\ngot \(8 << 20) bytes\n\(24 << 20) \(digest)\n", "\(outcome.stderr)")
    }
}

/// The same through a link 10 ms away each way (the delaying port-forward stand-in): correct under latency,
/// and the stand-in itself holds to its delays (its own tests, loopback only).
@Suite("A cluster session 10 ms away", .enabled(if: PodStandIn.isAvailable, "needs root for namespaces"))
final class DistantClusterTests {
    let forwarded: ForwardedAgent
    var pod: PodStandIn { forwarded.pod }
    let fixtures = Fixtures.shared
    typealias Service = PodStandIn.Service

    init() throws { forwarded = try ForwardedAgent(podWithNetwork: true, delayMilliseconds: 10) }
    deinit { forwarded.stop() }

    @Test("Files, lookups, UDP and HTTP by name, from Python and Go, each right")
    func everythingUnderLatency() throws {
        let script = """
            import socket, urllib.request
            print(open('/config/app.yaml').read(), end='')
            print(sorted({a[4][0] for a in socket.getaddrinfo('web', 80, socket.AF_INET)}))
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(5)
            s.sendto(b'ping', ('echo', 7))
            print(s.recvfrom(100))
            print(urllib.request.urlopen('http://web:8080/').read().decode(), end='')
            """
        let (python, log) = try pod.trace(["python3", "-c", script], agentAddress: forwarded.address)
        #expect(
            python.stdout == """
                listen: 8080
                mode: pod
                ['\(Service.web)']
                (b'echo ping', ('\(Service.echo)', 7))
                \(Service.webBody)
                """, "\(python.stderr)")
        // The pod's resolv.conf and hosts came with the session's first round trip: glibc's reads of them
        // cost none.
        for file in ["/etc/resolv.conf", "/etc/hosts"] {
            let opens = log.filter { $0.contains("\"\(file)\"") && $0.contains("openat(") }
            #expect(!opens.isEmpty && opens.allSatisfy { $0.contains("→ cached") }, "\(opens)")
        }
        let (go, _) = try pod.trace(
            [fixtures.path("gofixture"), "gets", "50", "http://web.default.svc.cluster.local:8080/"],
            agentAddress: forwarded.address)
        #expect(go.stdout == "ok 50\n", "\(go.stderr)")
    }

    @Test("The delaying stand-in's own tests")
    func standIn() throws {
        let folder = Fixtures.packageRoot.appendingPathComponent("Tests/Fixtures/delaying-forward")
        let result = try Run.process(["python3", "-B", "test_delaying_forward.py"], directory: folder, timeout: 180)
        #expect(result.status == 0, "\(result.stderr)")
    }
}
