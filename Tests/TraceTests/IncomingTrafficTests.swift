import Foundation
import Testing

/// Incoming traffic on the pod stand-in: a client namespace joined to the pod by a veth pair reaches the
/// pod's application (a Go HTTP server on :8080 answering "pod CLIENT-IP"); the developer's program is the
/// same static Go server answering "local CLIENT-IP", traced as nobody in the developer's namespace. Its
/// answer naming the client's address shows that accept reported the pod's client, not a relay.
@Suite("Incoming traffic: mirror and steal", .enabled(if: PodStandIn.isAvailable, "needs root for namespaces"))
final class IncomingTrafficTests {
    let pod: PodStandIn
    let fixtures = Fixtures.shared
    let client = PodStandIn.clientAddress

    init() throws { pod = try PodStandIn(incoming: true) }

    deinit {
        servers.endAll()
        pod.tearDown()
    }

    private lazy var servers = TracedServers(pod: pod)

    func startLocal(_ options: [String], port: Int = 8080, program: [String]? = nil) throws -> TracedServers.Server {
        try servers.start(options, port: port, program: program)
    }

    func end(_ server: TracedServers.Server, with signal: Int32 = SIGTERM) { servers.end(server, with: signal) }

    /// A POST of `megabytes` MiB to the pod from its client, on a connection of its own.
    func uploadToPod(megabytes: Int) throws -> Outcome {
        let script = """
            import http.client
            c = http.client.HTTPConnection('\(PodStandIn.podAddress)', 8080, timeout=20)
            c.request('POST', '/big', body=b'x' * (\(megabytes) << 20))
            print(c.getresponse().read().decode().strip())
            """
        return try Run.process(
            ["ip", "netns", "exec", pod.clientNamespace, "python3", "-c", script], directory: fixtures.directory)
    }

    /// The pod's netfilter tables, as `nft list tables` shows them.
    var sessionTables: String {
        get throws {
            let listing = try Run.process(["ip", "netns", "exec", pod.podNamespace, "/usr/sbin/nft", "list", "tables"])
            guard listing.status == 0 else { throw FixtureError(description: "nft list tables: \(listing.stderr)") }
            return listing.stdout
        }
    }

    @Test("steal: new connections reach the local program with the client's address; older ones and later ones the pod")
    func steal() throws {
        // A table left by an agent that was killed: the next session removes it.
        let stale = "table inet sysmirror_999999_1 {\n chain steal_8080 {\n }\n}\n"
        _ = try Run.process(["ip", "netns", "exec", pod.podNamespace, "/usr/sbin/nft", "-f", "-"], stdin: stale)
        #expect(try sessionTables.contains("sysmirror_999999_1"))
        let before = try pod.client(["GET /before"])  // opened before the session
        #expect(before.first?.hasPrefix("pod \(client)") == true)

        let server = try startLocal(["--incoming", "steal"])
        #expect(server.logText.contains("port 8080 of the pod: stolen"), "\(server.logText)")
        #expect(try !sessionTables.contains("sysmirror_999999_1"))
        #expect(pod.agentLogText.contains("removed the netfilter table sysmirror_999999_1"))
        let answers = try pod.client(["GET /one", "GET /two"])
        #expect(
            answers.map { $0.split(separator: " ").prefix(2).joined(separator: " ") }
                == Array(repeating: "local \(client)", count: 2))
        #expect(server.requests == "/one \n/two \n")
        try PodStandIn.waitUntil("the connections' ends in the log") { server.logText.contains("bytes in") }
        let log = server.logText
        // With the agent on this machine, the program holds the pod's socket itself.
        #expect(
            log.contains("accept4(") && log.contains("from \(client):")
                && log.contains("(stolen; the pod's own socket)"),
            "\(log)")
        #expect(
            log.contains("incoming connection from \(client):") && log.contains("stolen, ") && log.contains("bytes in"))

        end(server)
        // SIGTERM reached the program through sysmirror (none of sysmirror's threads takes it itself).
        #expect(server.process.terminationReason == .exit && server.process.terminationStatus == 128 + SIGTERM)
        #expect(try pod.client(["GET /after"]).first?.hasPrefix("pod \(client)") == true)
        #expect(try !sessionTables.contains("sysmirror_"))
    }

    @Test("mirror: clients get the pod's answers, and the local program a copy of each request")
    func mirror() throws {
        let server = try startLocal(["--incoming", "mirror", "--port-map", "18080:8080"], port: 18080)
        #expect(server.logText.contains("port 8080 of the pod: mirrored"), "\(server.logText)")
        let answers = try pod.client(["GET /first", "GET /second|X-Dev: me", "POST /third"])
        #expect(answers.allSatisfy { $0.hasPrefix("pod \(client) ") }, "\(answers)")
        try PodStandIn.waitUntil("the copies", timeout: 10) { server.outputText.contains("/third") }
        #expect(server.requests == "/first \n/second me\n/third \n")
        // The trace log is written behind the calls.
        try PodStandIn.waitUntil("the accepts in the log") {
            server.logText.contains("from \(self.client):") && server.logText.contains("(mirrored)")
        }
        end(server)
        #expect(try !sessionTables.contains("sysmirror_"))
    }

    /// An IPv6 program (Go's `[::]`) gets the pod's IPv4 clients as ::ffff:a.b.c.d on the pod's own socket,
    /// as its own dual-stack socket would show them.
    @Test("steal with a unix-socket agent: an IPv6 program holds the pod's own socket too, with no relay")
    func stealHandsThePodsSocket() throws {
        let server = try startLocal(
            ["--incoming", "steal"], program: [fixtures.path("gofixture"), "serve", "local", "[::]:8080"])
        #expect(server.logText.contains("port 8080 of the pod: stolen"), "\(server.logText)")
        // Two requests on one connection, then a second connection.
        let answers = try pod.client(["GET /one", "GET /two"]) + pod.client(["GET /three"])
        #expect(
            answers.map { $0.split(separator: " ").prefix(2).joined(separator: " ") }
                == Array(repeating: "local \(client)", count: 3))
        #expect(server.requests == "/one \n/two \n/three \n")
        // The ends come from the pod's kernel (sock_diag), as no relay counts the bytes.
        try PodStandIn.waitUntil("the connections' ends in the log") {
            server.logText.components(separatedBy: "ended: stolen, ").count == 3
        }
        let log = server.logText
        #expect(log.components(separatedBy: "(stolen; the pod's own socket)").count == 3, "\(log)")
        #expect(log.contains("incoming connection from \(client):") && log.contains("bytes in"), "\(log)")
        end(server)
        #expect(try pod.client(["GET /after"]).first?.hasPrefix("pod \(client)") == true)
    }

    @Test("steal with a header filter: matching requests are local, others the pod's, on one keep-alive connection")
    func stealFiltered() throws {
        let server = try startLocal(["--incoming", "steal", "--steal-header", "^X-Dev: me$"])
        let answers = try pod.client([
            "GET /a|X-Dev: me", "GET /b", "POST /c|X-Dev: me", "GET /d|X-Dev: someone-else", "POST /e",
            "GET /f|X-Dev: me",
        ])
        let bodies = answers.map { $0.split(separator: " ")[0] }
        #expect(bodies == ["local", "pod", "local", "pod", "pod", "local"], "\(answers)")
        #expect(Set(answers.map { $0.split(separator: " ").last! }).count == 1, "not one connection: \(answers)")
        #expect(server.requests == "/a me\n/c me\n/f me\n")
        end(server)
    }

    @Test("Killing sysmirror mid-steal gives the port back to the pod's application at once")
    func killedMidSteal() throws {
        let server = try startLocal(["--incoming", "steal"])
        #expect(try pod.client(["GET /x"]).first?.hasPrefix("local") == true)
        let started = Date()
        end(server, with: SIGKILL)
        var answer = ""
        while Date().timeIntervalSince(started) < 5 {
            answer = (try? pod.client(["GET /y"]))?.first ?? ""
            if answer.hasPrefix("pod") { break }
            usleep(20_000)
        }
        #expect(answer.hasPrefix("pod \(client)"), "still \(answer) after 5 s; the agent: \(pod.agentLogText)")
        try PodStandIn.waitUntil("the table's removal", timeout: 5) {
            (try? self.sessionTables.contains("sysmirror_")) == false
        }
    }

    @Test("A program that stops listening gives the port back, and the connection that found it gone")
    func stopsListening() throws {
        let server = try startLocal(["--incoming", "steal"], program: PodStandIn.answeringOnce(thenSleeping: 60))
        #expect(try pod.client(["GET /1"]).first?.hasPrefix("local \(client)") == true)
        // Passed on by the agent: the pod's application sees the pod's own address (docs/incoming.md, Limits).
        #expect(try pod.client(["GET /2"]).first?.hasPrefix("pod \(PodStandIn.podAddress)") == true)
        #expect(try pod.client(["GET /3"]).first?.hasPrefix("pod \(client)") == true)
        let chains = try Run.process(["ip", "netns", "exec", pod.podNamespace, "/usr/sbin/nft", "list", "chains"])
        #expect(!chains.stdout.contains("steal_8080"), "\(chains.stdout)")
        end(server)
    }

    @Test("mirror: a program that stops listening gives the port back, and the copies stop")
    func mirrorStopsListening() throws {
        let server = try startLocal(["--incoming", "mirror"], program: PodStandIn.answeringOnce(thenSleeping: 60))
        func mirrorRules() throws -> String {
            try Run.process(["ip", "netns", "exec", pod.podNamespace, "/usr/sbin/nft", "list", "ruleset"]).stdout
        }
        #expect(try mirrorRules().contains("log group"))
        for path in ["/1", "/2"] {
            #expect(try pod.client(["GET \(path)"]).first?.hasPrefix("pod \(client)") == true)
        }
        // The copy of /1 was the program's one connection; the copy of /2 found no listener.
        try PodStandIn.waitUntil("the copy's rule to go", timeout: 10) {
            (try? mirrorRules().contains("log group")) == false
        }
        #expect(server.outputText.contains("the program no longer listens: port 8080 of the pod is the pod's again"))
        end(server)
    }

    @Test("mirror: a copy the program does not read is cut short, and later copies still arrive")
    func mirrorUnread() throws {
        let program = """
            import socket, time
            s = socket.socket()
            s.bind(('127.0.0.1', 8080))
            s.listen(8)
            unread, _ = s.accept()
            second, _ = s.accept()
            head = b''
            while b'\\r\\n' not in head:
                head += second.recv(65536)
            print(head.split(b'\\r\\n')[0].decode(), flush=True)
            time.sleep(60)
            """
        let server = try startLocal(["--incoming", "mirror"], program: ["/usr/bin/python3", "-c", program])
        // More than the loopback connection's buffers and the 8 MiB sysmirror holds for a copy.
        let uploaded = try uploadToPod(megabytes: 24)
        #expect(uploaded.stdout.hasPrefix("pod \(client)"), "\(uploaded.stderr)")
        // A later connection is copied once the agent has caught up with the upload's copy (on a loaded
        // machine it may find sysmirror behind meanwhile, and copy no new connection until it is not): asked
        // again every half second.
        var asked = Date.distantPast
        try PodStandIn.waitUntil("the later copy", timeout: 30) {
            if Date().timeIntervalSince(asked) > 0.5 {
                asked = Date()
                #expect((try? pod.client(["GET /after"]))?.first?.hasPrefix("pod \(client)") == true)
            }
            return server.outputText.contains("GET /after HTTP/1.1")
        }
        try PodStandIn.waitUntil("the cut copy in the log", timeout: 10) {
            server.logText.contains("mirrored (cut short)")
        }
        end(server)
    }

    @Test("mirror: a developer's side far behind has its copies cut, and gets new ones once it catches up")
    func mirrorBehind() throws {
        let server = try startLocal(["--incoming", "mirror"])
        // sysmirror stopped: the agent's copies pile up unread, past its 16 MiB limit. It stays stopped until
        // the agent says so: on a busy machine the agent's copying can trail the upload's end.
        kill(server.process.processIdentifier, SIGSTOP)
        defer { kill(server.process.processIdentifier, SIGCONT) }
        let uploaded = try uploadToPod(megabytes: 24)
        #expect(uploaded.stdout.hasPrefix("pod \(client)"), "\(uploaded.stderr)")
        try PodStandIn.waitUntil("the agent to find sysmirror behind", timeout: 10) {
            pod.agentLogText.contains("behind the pod's mirrored traffic")
        }
        kill(server.process.processIdentifier, SIGCONT)
        try PodStandIn.waitUntil("the agent to see sysmirror catch up") {
            _ = try? pod.client(["GET /after"])
            return server.requests.contains("/after")
        }
        #expect(pod.agentLogText.contains("caught up: new connections are copied again"))
        end(server)
    }

    @Test("mirror: when the agent dies, the open copies end at once, cut short")
    func mirrorAgentGone() throws {
        let server = try startLocal(["--incoming", "mirror"])
        let holding = """
            import socket, time
            s = socket.create_connection(('\(PodStandIn.podAddress)', 8080))
            s.sendall(b'GET /held HTTP/1.1\\r\\nHost: pod\\r\\n')
            time.sleep(30)
            """
        let client = try PodStandIn.start(
            ["ip", "netns", "exec", pod.clientNamespace, "python3", "-c", holding], log: nil)
        defer {
            client.terminate()
            client.waitUntilExit()
        }
        try PodStandIn.waitUntil("the copy's accept") { server.logText.contains("(mirrored)") }
        pod.killAgent()
        try PodStandIn.waitUntil("the copy's end", timeout: 5) { server.logText.contains("mirrored (cut short)") }
        end(server)
    }

    @Test("A second session stealing a stolen port is refused with a clear message; its program still runs")
    func secondSteal() throws {
        let first = try startLocal(["--incoming", "steal"])
        let second = try startLocal(["--incoming", "steal", "--port-map", "18081:8080"], port: 18081)
        try PodStandIn.waitUntil("the refusal") { second.outputText.contains("stays the pod's") }
        #expect(second.outputText.contains("port 8080 of the pod is already stolen by another sysmirror session"))
        #expect(try pod.client(["GET /z"]).first?.hasPrefix("local") == true)
        end(second)
        #expect(try pod.client(["GET /z"]).first?.hasPrefix("local") == true)  // the first keeps it
        end(first)
    }
}
