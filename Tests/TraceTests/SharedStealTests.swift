import Foundation
import Testing

/// Several developers steal one pod port, each the requests that carry their mark (docs/incoming.md,
/// "Sharing a port"): alice's and bob's programs are static Go servers answering "alice CLIENT-IP" and
/// "bob CLIENT-IP", each traced through an agent of its own in the pod stand-in (the second in a process
/// namespace of its own, as a second ephemeral container), and the pod's application answers "pod CLIENT-IP".
@Suite("Sharing a stolen port", .enabled(if: PodStandIn.isAvailable, "needs root for namespaces"))
final class SharedStealTests {
    let pod: PodStandIn
    let servers: TracedServers

    init() throws {
        pod = try PodStandIn(incoming: true)
        servers = TracedServers(pod: pod)
    }

    deinit {
        servers.endAll()
        pod.tearDown()
    }

    /// `name`'s program on local port `port`, stealing the pod's 8080 for `X-Dev: NAME` (or `filter`).
    func steal(as name: String, port: Int, agent: String? = nil, filter: String? = nil) throws -> TracedServers.Server {
        let server = try servers.start(
            ["--steal-header", filter ?? "^X-Dev: \(name)$", "--port-map", "\(port):8080"], port: port, name: name,
            agent: agent)
        try PodStandIn.waitUntil("\(name)'s steal") {
            server.logText.contains("port 8080 of the pod: stolen") || server.outputText.contains("stays the pod's")
        }
        return server
    }

    /// Who answered each request (the first word of each answer), on one keep-alive connection.
    func answers(_ requests: [String]) throws -> [String] {
        try pod.client(requests).map { String($0.split(separator: " ")[0]) }
    }

    var tables: String {
        (try? Run.process(["ip", "netns", "exec", pod.podNamespace, "/usr/sbin/nft", "list", "tables"]).stdout) ?? ""
    }

    /// The last session's table goes as its agent hears of its end, a moment after its sysmirror exits.
    func waitForNoTable() throws {
        try PodStandIn.waitUntil("no table left", timeout: 5) { !tables.contains("sysmirror_") }
    }

    @Test("Two filtered sessions and the pod share a port, per request, also on one connection; a mirror sees all")
    func share() throws {
        let alice = try steal(as: "alice", port: 18081)
        let other = try pod.startExtraAgent()
        let bob = try steal(as: "bob", port: 18082, agent: other.address)
        let mirror = try servers.start(["--incoming", "mirror", "--port-map", "18083:8080"], port: 18083, name: "copy")
        try PodStandIn.waitUntil("the mirror") { mirror.logText.contains("port 8080 of the pod: mirrored") }

        // Fresh connections, then all three kinds mixed on one keep-alive connection, twice over.
        for request in ["GET /1|X-Dev: alice", "GET /2|X-Dev: bob", "GET /3", "GET /4|X-Dev: carol"] {
            let who = try answers([request])
            #expect(
                who == [request.contains("alice") ? "alice" : request.contains("bob") ? "bob" : "pod"], "\(request)")
        }
        let mixed = try answers([
            "GET /5|X-Dev: bob", "POST /6|X-Dev: alice", "GET /7", "GET /8|X-Dev: bob", "POST /9",
            "GET /10|X-Dev: alice",
        ])
        #expect(mixed == ["bob", "alice", "pod", "bob", "pod", "alice"])
        // Alice's agent, whose redirect is the first, handed bob's connections to bob's agent whole.
        #expect(pod.agentLogText.contains("handed whole to the agent of"), "\(pod.agentLogText)")
        #expect(alice.requests == "/1 alice\n/6 alice\n/10 alice\n")
        #expect(bob.requests == "/2 bob\n/5 bob\n/8 bob\n")
        // The mirror got a copy of every request, whoever answered it.
        try PodStandIn.waitUntil("the copies", timeout: 10) { mirror.requests.contains("/10 ") }
        #expect(mirror.requests.split(separator: "\n").map { $0.split(separator: " ")[0] } == (1...10).map { "/\($0)" })
        for server in [alice, bob] { #expect(!server.logText.contains("missed"), "\(server.logText)") }

        servers.end(bob)
        servers.end(alice)
        servers.end(mirror)
        try waitForNoTable()
        #expect(try answers(["GET /11|X-Dev: alice"]) == ["pod"])
    }

    @Test("The first session leaves, cleanly and then by its agent's SIGKILL: the others keep their requests")
    func firstLeaves() throws {
        let second = try pod.startExtraAgent()
        let third = try pod.startExtraAgent()
        let alice = try steal(as: "alice", port: 18081)
        let bob = try steal(as: "bob", port: 18082, agent: second.address)
        #expect(try answers(["GET /a|X-Dev: alice", "GET /b|X-Dev: bob"]) == ["alice", "bob"])

        // Alice's session ends: her table goes, bob's redirect takes the port's new connections.
        servers.end(alice)
        #expect(try answers(["GET /c|X-Dev: bob", "GET /d|X-Dev: alice", "GET /e"]) == ["bob", "pod", "pod"])

        // Carol comes in third; bob's agent, whose redirect is now the first, is killed. Its table would send
        // the port's connections to no one: carol's agent removes it.
        let carol = try steal(as: "carol", port: 18083, agent: third.address)
        #expect(try answers(["GET /f|X-Dev: carol", "GET /g|X-Dev: bob"]) == ["carol", "bob"])
        kill(second.process.processIdentifier, SIGKILL)
        second.process.waitUntilExit()
        try PodStandIn.waitUntil("carol's agent to remove bob's table", timeout: 5) {
            (try? answers(["GET /h|X-Dev: carol"])) == ["carol"]
        }
        #expect(try answers(["GET /i|X-Dev: bob", "GET /j|X-Dev: carol", "GET /k"]) == ["pod", "carol", "pod"])
        #expect(carol.requests.hasSuffix("/j carol\n"), "\(carol.requests)")
        servers.end(bob, with: SIGKILL)

        // The last session ends: no table is left, and the port is the pod's.
        servers.end(carol)
        try waitForNoTable()
        #expect(try answers(["GET /l|X-Dev: carol", "GET /m"]) == ["pod", "pod"])
    }

    @Test("Overlapping filters: the session that registered first wins, and the other's log says what it missed")
    func overlapping() throws {
        let anyone = try steal(as: "anyone", port: 18081, filter: "^X-Dev: ")
        let other = try pod.startExtraAgent()
        let bob = try steal(as: "bob", port: 18082, agent: other.address)
        #expect(try answers(["GET /x|X-Dev: bob", "GET /y"]) == ["anyone", "pod"])
        try PodStandIn.waitUntil("bob's notice") { bob.outputText.contains("matched your filter") }
        #expect(
            bob.outputText.contains(
                "port 8080 of the pod: GET /x from \(PodStandIn.clientAddress):"),
            "\(bob.outputText)")
        #expect(bob.outputText.contains("matched your filter and went to nobody@"), "\(bob.outputText)")
        #expect(bob.outputText.contains("'s session, which stole port 8080 first"), "\(bob.outputText)")
        #expect(bob.requests.isEmpty && anyone.requests == "/x bob\n")
    }

    /// Any process of the pod's network namespace can reach the agents' beacons and hand-over sockets; one
    /// that is not an agent (another user than root) claims every request, earlier than anyone, and hands a
    /// connection over to every agent, and is not heard. Bob's agent, whose redirect comes first, hands
    /// alice's connection to alice's agent after it: the doorbell that has her agent take what waits.
    @Test("A process of the pod that is not an agent cannot claim the port's requests, nor hand connections over")
    func strangerIsNotHeard() throws {
        let other = try pod.startExtraAgent()
        let bob = try steal(as: "bob", port: 18082, agent: other.address)
        let alice = try steal(as: "alice", port: 18081)
        let stranger = """
            import socket, struct, time
            def text(t):
                b = t.encode()
                return struct.pack('>H', len(b)) + b
            def frame(kind, payload):
                return struct.pack('>IB', len(payload) + 1, kind) + payload
            names = [line.split()[-1][1:] for line in open('/proc/net/unix')
                     if line.split()[-1].startswith('@sysmirror-agent-') and line.split()[3] == '00010000']
            inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            inbox.bind('\\0sysmirror-handoff-stranger')
            peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            peer.connect('\\0' + names[0])
            claim = text('stranger') + struct.pack('>IQ', 1, 0) + text('^X-Dev: ') + text('') + text('x@y') + text('t')
            try:
                peer.sendall(frame(1, text('stranger')) + frame(3, struct.pack('>H', 8080) + claim))
            except OSError:
                pass  # closed by the agent already
            # And hands over a connection of its own, as an agent hands one whose first request is alice's.
            listener = socket.create_server(('127.0.0.1', 0))
            mine = socket.create_connection(listener.getsockname())
            client = bytes([2, 0, 0x13, 0x88, 10, 250, 0, 9]) + bytes(8)
            request = b'GET /injected HTTP/1.1\\r\\nHost: x\\r\\nX-Dev: alice\\r\\n\\r\\n'
            for name in names:
                hand = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                hand.connect('\\0sysmirror-handoff-' + name[len('sysmirror-agent-'):])
                for session in range(1, 5):
                    deliver = frame(5, struct.pack('>IH', session, 8080) + client)
                    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack('i', mine.fileno()))]
                    hand.sendmsg([deliver + request], rights)
            print('claimed', len(names), flush=True)
            time.sleep(3)
            """
        let said = Fixtures.shared.path("stranger-\(pod.name).log")
        defer { try? FileManager.default.removeItem(atPath: said) }
        let process = try PodStandIn.start(
            [
                "ip", "netns", "exec", pod.podNamespace, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                "/usr/bin/python3", "-c", stranger,
            ], log: said)
        defer {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        // It has said its claim (or tried to: the agent may have closed the connection first); or it failed.
        try PodStandIn.waitUntil("the stranger's claim") {
            ((try? String(contentsOfFile: said, encoding: .utf8)) ?? "").contains("claimed") || !process.isRunning
        }
        #expect(process.isRunning, "\((try? String(contentsOfFile: said, encoding: .utf8)) ?? "")")
        #expect(
            ((try? String(contentsOfFile: said, encoding: .utf8)) ?? "").contains("claimed 2"), "two agents' beacons")
        #expect(try answers(["GET /mine|X-Dev: alice", "GET /yours|X-Dev: bob"]) == ["alice", "bob"])
        let bobsAgentLog =
            (try? String(contentsOfFile: Fixtures.shared.path("agent-\(pod.name)-1.log"), encoding: .utf8))
        #expect(bobsAgentLog?.contains("handed whole to the agent of") == true, "\(bobsAgentLog ?? "")")
        // Neither its claim nor its connection reached alice.
        #expect(alice.requests == "/mine alice\n")
        #expect(bob.requests == "/yours bob\n")
    }

    /// An agent of an earlier sysmirror hands connections over with no doorbell after them (as root, like an
    /// agent): each is served all the same, a moment later, rather than left waiting.
    @Test("A hand-over whose doorbell never rings is served all the same")
    func unrungHandOver() throws {
        let alice = try steal(as: "alice", port: 18081)
        let stolen = try #require(
            pod.agentLogText.split(separator: "\n").last { $0.contains("port 8080 of the pod is stolen") })
        let session = try #require(stolen.split(separator: "session: ").last?.prefix { $0.isNumber })
        let earlierAgent = """
            import socket, struct, sys, time
            name = next(line.split()[-1][1:] for line in open('/proc/net/unix')
                        if line.split()[-1].startswith('@sysmirror-agent-') and line.split()[3] == '00010000')
            listener = socket.create_server(('127.0.0.1', 0))
            client = socket.create_connection(listener.getsockname())
            served, _ = listener.accept()
            address = bytes([2, 0, 0x13, 0x88, 10, 250, 0, 9]) + bytes(8)
            deliver = struct.pack('>IBIH', 1 + 6 + len(address), 5, int(sys.argv[1]), 8080) + address
            request = b'GET /unrung HTTP/1.1\\r\\nHost: x\\r\\nX-Dev: alice\\r\\n\\r\\n'
            hand = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            hand.connect('\\0sysmirror-handoff-' + name[len('sysmirror-agent-'):])
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack('i', served.fileno()))]
            started = time.monotonic()
            hand.sendmsg([deliver + request], rights)
            served.close()
            client.settimeout(5)
            answer = client.recv(65536).decode(errors='replace')
            print(answer.split('\\r\\n\\r\\n', 1)[-1].strip(), round(time.monotonic() - started, 3))
            """
        let outcome = try Run.process(
            ["ip", "netns", "exec", pod.podNamespace, "/usr/bin/python3", "-c", earlierAgent, String(session)])
        #expect(outcome.stdout.hasPrefix("alice "), "\(outcome.stdout) \(outcome.stderr)")
        let seconds = Double(
            outcome.stdout.split(separator: " ").last?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "")
        #expect((seconds ?? 9) < 2, "served after \(seconds ?? -1) s")
        #expect(alice.requests == "/unrung alice\n")
    }

    @Test("A whole steal beside filtered ones is refused, and a filtered one beside a whole steal, each saying why")
    func refusals() throws {
        let alice = try steal(as: "alice", port: 18081)
        let other = try pod.startExtraAgent()
        let whole = try servers.start(
            ["--incoming", "steal", "--port-map", "18082:8080"], port: 18082, agent: other.address)
        try PodStandIn.waitUntil("the refusal") { whole.outputText.contains("stays the pod's") }
        #expect(
            whole.outputText.contains(
                "port 8080 of the pod is shared by sessions that steal only the requests their filter matches: nobody@"),
            "\(whole.outputText)")
        #expect(whole.outputText.contains("(--steal-header '^X-Dev: alice$')"))
        #expect(whole.outputText.contains("Steal with a filter of your own to share it (--steal-header, --steal-path)"))
        #expect(try answers(["GET /a|X-Dev: alice", "GET /b"]) == ["alice", "pod"])
        servers.end(whole)
        servers.end(alice)

        let everything = try servers.start(["--incoming", "steal", "--port-map", "18083:8080"], port: 18083)
        try PodStandIn.waitUntil("the whole steal") { everything.logText.contains("port 8080 of the pod: stolen") }
        let bob = try steal(as: "bob", port: 18084, agent: other.address)
        #expect(
            bob.outputText.contains("port 8080 of the pod is already stolen by another sysmirror session, nobody@"),
            "\(bob.outputText)")
        #expect(
            bob.outputText.contains(
                "which takes every request; a filtered steal shares a port only with other filtered steals"))
        #expect(try answers(["GET /c|X-Dev: bob"]) == ["local"])
    }
}

/// Two developers' machines (two network namespaces, each with the machine's kubectl and the same
/// kubeconfig) steal one pod's port by filter with `--target`: each session adds an agent container of its
/// own to the pod, and the two agents share the port.
@Suite("Sharing a stolen port with --target", .enabled(if: PodStandIn.isAvailable, "needs root for namespaces"))
final class KubernetesSharedStealTests {
    let cluster: ClusterStandIn
    private var traces: [Process] = []

    init() throws { cluster = try ClusterStandIn(incoming: true) }

    deinit {
        for trace in traces where trace.isRunning {
            kill(trace.processIdentifier, SIGTERM)
            if !exits(trace.processIdentifier, within: 10) { kill(trace.processIdentifier, SIGKILL) }
            trace.waitUntilExit()
        }
        cluster.tearDown()
    }

    /// `name`'s session from `machine` (the first developer's namespace if nil), once the pod's port is its:
    /// its output (stdout and stderr).
    func steal(as name: String, machine: String?) throws -> String {
        let output = Fixtures.shared.path("shared-\(name)-\(UUID().uuidString).out")
        let log = Fixtures.shared.path("shared-\(name)-\(UUID().uuidString).log")
        let server = [Fixtures.shared.path("gofixture"), "serve", name, "127.0.0.1:8080"]
        traces.append(
            try cluster.startTrace(
                ["--log", log, "--target", "deployment/web", "--steal-header", "^X-Dev: \(name)$", "--"] + server,
                output: output, machine: machine))
        func text(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }
        // An agent container to start and a port-forward to set up: slow on a loaded machine.
        do {
            try PodStandIn.waitUntil("\(name)'s steal", timeout: 120) {
                text(log).contains("port 8080 of the pod: stolen") || text(output).contains("stays the pod's")
            }
        } catch {
            throw FixtureError(description: "\(error); \(name)'s sysmirror said: \(text(output))")
        }
        return output
    }

    @Test("Alice's and Bob's machines each get their marked requests, and the pod the rest")
    func twoMachines() throws {
        let alice = try steal(as: "alice", machine: nil)
        let bob = try steal(as: "bob", machine: try cluster.addMachine())
        let answers = try cluster.pod.client([
            "GET /1|X-Dev: bob", "GET /2|X-Dev: alice", "GET /3", "GET /4|X-Dev: bob",
        ]).map { $0.split(separator: " ")[0] }
        #expect(answers == ["bob", "alice", "pod", "bob"])
        let requests = { (file: String) in
            ((try? String(contentsOfFile: file, encoding: .utf8)) ?? "").split(separator: "\n").filter {
                $0.hasPrefix("/") && !$0.hasPrefix("/probe")
            }
        }
        #expect(requests(alice) == ["/2 alice"])
        #expect(requests(bob) == ["/1 bob", "/4 bob"])
        // Two agent containers, one a session.
        #expect(cluster.recorded.filter { $0["ephemeral_container"] != nil }.count == 2)
    }
}
