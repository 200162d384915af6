import Foundation
import LinuxSystem
import Testing

/// sysmirror's own resources over a long session: thousands of connections, one after another, must leave the
/// `sysmirror trace` process with as many threads and as much memory as it had after the first hundred. Each
/// test reads /proc/PID/status of the trace process (Threads, VmSize, VmRSS) after `warmUp` connections and
/// again at the end (before the session ends), prints both, and checks them against `threadBound` and the
/// allowed growth. The pod stand-in is PodStandIn's; the traced programs run as nobody.
///
/// The tests are serialized: each keeps both CPUs busy for tens of seconds, and their timings mean more alone.
@Suite(
    "Long sessions: sysmirror's threads and memory stay flat",
    .enabled(if: PodStandIn.isAvailable, "needs root for namespaces"), .serialized)
final class LongSessionTests {
    /// The most threads a `sysmirror trace` session may have: the bound docs/architecture.md states for a session.
    static let threadBound = 8
    /// Connections made before the first reading.
    static let warmUp = 100
    /// VmSize at the end may differ from the first reading by this fraction of it.
    static let vmSizeTolerance = 0.10
    /// VmRSS at the end may differ from the first reading by this many kB.
    static let vmRSSToleranceKB = 5 * 1024
    static let stolenConnections = 3_000
    static let mirroredConnections = 1_000
    /// Connections marked for a session whose agent is not the one that receives them.
    static let sharedConnections = 1_000
    /// Outgoing connections through the TCP agent (a port-forward stand-in, two socat hops).
    static let outgoingConnections = 10_000
    /// Lookups of a name with four search-list candidates through the TCP agent.
    static let lookups = 2_000

    let fixtures = Fixtures.shared
    let client = PodStandIn.clientAddress
    private var pods: [PodStandIn] = []
    private var sessions: [TracedSession] = []
    private var processes: [Process] = []
    private var agents: [ForwardedAgent] = []
    private var files: [String] = []

    deinit {
        for session in sessions { session.end(with: SIGKILL) }
        for process in processes where process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        for agent in agents { agent.stop() }
        for pod in pods { pod.tearDown() }
        for file in files { try? FileManager.default.removeItem(atPath: file) }
    }

    // MARK: - The scenarios

    /// On 127.0.0.1 and on [::] alike the program holds the pod's socket (the agent listens in its family).
    @Test(
        "steal: 3,000 connections one after another, all answered by the local program; sysmirror stays flat",
        arguments: ["127.0.0.1:8080", "[::]:8080"])
    func stealMany(listening address: String) throws {
        let started = Date()
        let pod = try makePod(incoming: true)
        let session = try startLocal(
            pod, ["--incoming", "steal"], program: [fixtures.path("gofixture"), "serve", "local", address])
        #expect(session.logText.contains("port 8080 of the pod: stolen"), "\(session.outputText)\n\(session.logText)")

        let connecting = Date()
        let first = try connections(from: pod, count: Self.warmUp, first: 0, expecting: "local \(client)")
        #expect(first.matched == Self.warmUp, "\(first)")
        let before = try resources(of: session)
        let rest = try connections(
            from: pod, count: Self.stolenConnections - Self.warmUp, first: Self.warmUp, expecting: "local \(client)")
        #expect(rest.matched == Self.stolenConnections - Self.warmUp, "\(rest)")
        let after = try resources(of: session)
        let seconds = Date().timeIntervalSince(connecting)

        check(
            "steal on \(address)", connections: Self.stolenConnections, seconds: seconds,
            total: Date().timeIntervalSince(started),
            before: before, after: after)
        end(session)
    }

    @Test("mirror: 1,000 connections answered by the pod, each copied to the local program; sysmirror stays flat")
    func mirrorMany() throws {
        let started = Date()
        let pod = try makePod(incoming: true)
        let session = try startLocal(pod, ["--incoming", "mirror"])
        #expect(session.logText.contains("port 8080 of the pod: mirrored"), "\(session.outputText)\n\(session.logText)")

        let connecting = Date()
        let first = try connections(from: pod, count: Self.warmUp, first: 0, expecting: "pod \(client)")
        #expect(first.matched == Self.warmUp, "\(first)")
        // The reading is taken once the copies have arrived, so that it holds no copy in flight.
        try waitForCopies(session, count: Self.warmUp)
        let before = try resources(of: session)
        let rest = try connections(
            from: pod, count: Self.mirroredConnections - Self.warmUp, first: Self.warmUp, expecting: "pod \(client)")
        #expect(rest.matched == Self.mirroredConnections - Self.warmUp, "\(rest)")
        try waitForCopies(session, count: Self.mirroredConnections)
        let after = try resources(of: session)
        let seconds = Date().timeIntervalSince(connecting)
        // Every request's copy reached the program, each once.
        let copies = session.requests.filter { $0.hasPrefix("/n") }
        #expect(
            Set(copies) == Set((0..<Self.mirroredConnections).map { "/n\($0)" })
                && copies.count == Self.mirroredConnections)

        check(
            "mirror", connections: Self.mirroredConnections, seconds: seconds,
            total: Date().timeIntervalSince(started), before: before, after: after)
        end(session)
    }

    /// Alice's session, on the pod's agent, took the port first: its agent gets every connection and hands
    /// each of bob's to bob's agent, descriptor and all.
    @Test(
        "shared steal: 1,000 connections for a session of a second agent, passed on by the first; both agents and sysmirror stay flat"
    )
    func sharedMany() throws {
        let started = Date()
        let pod = try makePod(incoming: true)
        var sessions: [TracedSession] = []
        for (name, port, agent) in [("alice", 18081, nil), ("bob", 18082, try pod.startExtraAgent())] {
            let session = try startLocal(
                pod, ["--steal-header", "^X-Dev: \(name)$", "--port-map", "\(port):8080"],
                program: [fixtures.path("gofixture"), "serve", name, "127.0.0.1:\(port)"], agent: agent?.address)
            #expect(session.logText.contains("port 8080 of the pod: stolen"), "\(session.outputText)")
            sessions.append(session)
        }
        let agents = try [#require(pod.agent?.processIdentifier), #require(pod.extraAgentPIDs.first)]

        let connecting = Date()
        let first = try connections(
            from: pod, count: Self.warmUp, first: 0, expecting: "bob \(client)", header: "X-Dev: bob")
        #expect(first.matched == Self.warmUp, "\(first)")
        let before = try resources(of: sessions[1])
        let agentsBefore = try agents.map(ProcessResources.init)
        let rest = try connections(
            from: pod, count: Self.sharedConnections - Self.warmUp, first: Self.warmUp, expecting: "bob \(client)",
            header: "X-Dev: bob")
        #expect(rest.matched == Self.sharedConnections - Self.warmUp, "\(rest)")
        let after = try resources(of: sessions[1])
        let agentsAfter = try agents.map(ProcessResources.init)
        check(
            "shared steal, bob's sysmirror", connections: Self.sharedConnections,
            seconds: Date().timeIntervalSince(connecting), total: Date().timeIntervalSince(started), before: before,
            after: after)
        for (name, (first, last)) in zip(["the receiving agent", "bob's agent"], zip(agentsBefore, agentsAfter)) {
            print("LongSession shared steal, \(name): \(first) → \(last)")
            #expect(last.descriptors <= first.descriptors + 4, "\(name): \(first) → \(last)")
            #expect(last.threads <= first.threads, "\(name): \(first) → \(last)")
            #expect(abs(last.vmRSS - first.vmRSS) <= Self.vmRSSToleranceKB, "\(name): \(first) → \(last)")
        }
        for session in sessions { end(session) }
    }

    @Test("10,000 outgoing connections through an agent on TCP (port-forward stand-in); sysmirror stays flat")
    func outgoingMany() throws {
        // Each connection: opened, one PING, the whole +PONG read, closed.
        let step = """
            s = socket.create_connection(('\(PodStandIn.Service.redis)', 6379), timeout=10)
            s.sendall(b'PING\\r\\n')
            answer = b''
            while not answer.endswith(b'\\r\\n'):
                chunk = s.recv(64)
                if not chunk:
                    break
                answer += chunk
            s.close()
            return None if answer == b'+PONG\\r\\n' else answer
            """
        let session = try throughPortForward(
            "outgoing over TCP", Self.outgoingConnections, "connections", step: step)
        // Every connect went through the agent on TCP, as through a port-forward.
        let connects = session.logText.split(separator: "\n").filter {
            $0.contains("connect(") && $0.contains("\(PodStandIn.Service.redis):6379")
        }
        #expect(connects.count == Self.outgoingConnections)
        #expect(
            connects.allSatisfy { $0.contains("→ remote") && $0.contains("through 127.0.0.1:") },
            "\(connects.first ?? "")")
    }

    @Test("2,000 lookups of a full name through a port-forward, a UDP socket per search-list candidate; flat")
    func lookupsMany() throws {
        // glibc tries each search-list candidate of the name (ndots:5) on a socket of its own: 8,000 sockets.
        let step = """
            found = {a[4][0] for a in socket.getaddrinfo('web.default.svc.cluster.local', 80, socket.AF_INET, socket.SOCK_STREAM)}
            return None if found == {'\(PodStandIn.Service.web)'} else found
            """
        let session = try throughPortForward("lookups over TCP", Self.lookups, "lookups", step: step)
        let queries = session.logText.split(separator: "\n").filter {
            $0.contains("connect(") && $0.contains("\(PodStandIn.Service.dns):53") && $0.contains("→ remote")
        }
        #expect(queries.count == 4 * Self.lookups, "\(queries.count) sockets to the name server")
    }

    /// Runs `count` of `step` (the body of a Python function, which returns None when all went right, else
    /// what it saw) one after another in a program traced through an agent on TCP (as through a
    /// port-forward), and checks the trace process after `warmUp` of them and at the end.
    func throughPortForward(_ scenario: String, _ count: Int, _ what: String, step: String) throws -> TracedSession {
        let started = Date()
        let pod = try makePod(network: true)
        let forwarded = try ForwardedAgent(in: pod)
        agents.append(forwarded)
        let paused = fixtures.path("long-paused-\(pod.name)"), finished = fixtures.path("long-finished-\(pod.name)")
        files += [paused, finished]
        // The program waits (for a file to appear) after `warmUp` steps and again after the last, so that the
        // trace process can be read.
        let script = """
            import os, socket, sys, time
            total, warm_up, paused, finished = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
            def wait_for(path):
                deadline = time.monotonic() + 120
                while not os.path.exists(path) and time.monotonic() < deadline:
                    time.sleep(0.02)
            def step():
            \(step.split(separator: "\n").map { "    " + $0 }.joined(separator: "\n"))
            ok, bad = 0, 0
            for i in range(total):
                if i == warm_up:
                    print('paused', ok, flush=True)
                    wait_for(paused)
                try:
                    wrong = step()
                except OSError as error:
                    wrong = repr(error)
                if wrong is None:
                    ok += 1
                else:
                    bad += 1
                    if bad <= 5:
                        print('bad', i, wrong, flush=True)
                    if bad >= 50:
                        break
            print('finished', ok, flush=True)
            wait_for(finished)
            """
        let session = try startTrace(
            pod, ["/usr/bin/python3", "-c", script, "\(count)", "\(Self.warmUp)", paused, finished],
            agent: forwarded.address)
        let running = Date()
        try PodStandIn.waitUntil("the first \(Self.warmUp) \(what)", timeout: 60) {
            session.outputText.contains("paused") || !session.process.isRunning
        }
        // The output holds sysmirror's own messages too (its standard error).
        #expect(("\n" + session.outputText).contains("\npaused \(Self.warmUp)\n"), "\(session.outputText)")
        let before = try resources(of: session)
        try Data().write(to: URL(fileURLWithPath: paused))
        try PodStandIn.waitUntil("\(count) \(what)", timeout: 600) {
            session.outputText.contains("finished") || !session.process.isRunning
        }
        let after = try resources(of: session)
        let seconds = Date().timeIntervalSince(running)
        #expect(session.outputText.hasSuffix("finished \(count)\n"), "\(session.outputText)")
        try Data().write(to: URL(fileURLWithPath: finished))
        let status = session.wait(seconds: 30)
        #expect(status == 0, "\(session.outputText)")
        check(
            scenario, connections: count, seconds: seconds, total: Date().timeIntervalSince(started), before: before,
            after: after)
        return session
    }

    @Test(
        "steal, failure paths: a client reset mid-request, a connection the program never reads; all else still answered"
    )
    func stealFailures() throws {
        let started = Date()
        let pod = try makePod(incoming: true)
        // Accepts on threads; /reset and /stall say when their head is read; /stall is then never read again;
        // /file answers the pod's /etc/hostname (a remote file); /release closes the held connections.
        let program = """
            import socket, threading
            held = []
            def head_of(c):
                head = b''
                while not head.endswith(b'\\r\\n\\r\\n'):
                    byte = c.recv(1)
                    if not byte:
                        return None
                    head += byte
                return head.decode('latin-1')
            def answer(c, body):
                c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n' % len(body) + body)
                c.close()
            def serve(c, peer):
                path = '?'
                try:
                    head = head_of(c)
                    if head is None:
                        c.close()
                        return
                    path = head.split(' ')[1]
                    if path in ('/reset', '/stall'):
                        print(path, 'reading', flush=True)
                    if path == '/stall':
                        held.append(c)
                        return
                    length = 0
                    for line in head.split('\\r\\n')[1:]:
                        name, _, value = line.partition(':')
                        if name.strip().lower() == 'content-length':
                            length = int(value)
                    got = 0
                    while got < length:
                        chunk = c.recv(min(65536, length - got))
                        if not chunk:
                            break
                        got += len(chunk)
                    if got < length:
                        print(path, 'ended after %d of %d bytes: end of stream' % (got, length), flush=True)
                        c.close()
                        return
                    if path == '/file':
                        with open('/etc/hostname', 'rb') as f:
                            answer(c, f.read())
                    elif path == '/release':
                        count = len(held)
                        for h in held:
                            h.close()
                        held.clear()
                        answer(c, b'released %d\\n' % count)
                    else:
                        answer(c, ('local %s\\n' % peer[0]).encode())
                except OSError as error:
                    print(path, 'ended:', error, flush=True)
                    c.close()
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(('127.0.0.1', 8080))
            s.listen(64)
            while True:
                c, peer = s.accept()
                threading.Thread(target=serve, args=(c, peer), daemon=True).start()
            """
        let session = try startLocal(pod, ["--incoming", "steal"], program: ["/usr/bin/python3", "-c", program])
        #expect(session.logText.contains("port 8080 of the pod: stolen"), "\(session.outputText)\n\(session.logText)")
        let connecting = Date()
        let first = try connections(from: pod, count: Self.warmUp, first: 0, expecting: "local \(client)")
        #expect(first.matched == Self.warmUp, "\(first)")
        let before = try resources(of: session)

        // (a) A client that resets its connection (SO_LINGER 0) once the program is reading its request's body.
        let reset = """
            import socket, struct, sys, time
            s = socket.create_connection(('\(PodStandIn.podAddress)', 8080), timeout=10)
            s.sendall(b'POST /reset HTTP/1.1\\r\\nHost: pod\\r\\nContent-Length: 1000000\\r\\n\\r\\n' + b'x' * 65536)
            deadline = time.monotonic() + 10
            while '/reset reading' not in open(sys.argv[1]).read():
                if time.monotonic() > deadline:
                    sys.exit('the program never got /reset')
                time.sleep(0.02)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
            s.close()
            print('reset')
            """
        let resetOutcome = try Run.process(
            ["ip", "netns", "exec", pod.clientNamespace, "python3", "-c", reset, session.output],
            directory: fixtures.directory, timeout: 30)
        #expect(resetOutcome.stdout == "reset\n", "\(resetOutcome.stderr)")
        // The program's end of it ends too (end of stream or a reset), rather than waiting forever.
        try PodStandIn.waitUntil("the reset to reach the program", timeout: 10) {
            session.outputText.contains("/reset ended")
        }
        let resetEnd = session.outputText.split(separator: "\n").first { $0.hasPrefix("/reset ended") } ?? ""
        print("LongSession failure paths: the program's end of the reset connection: \(resetEnd)")

        // (b) A client sending 16 MiB that the program never reads: it sends until nothing moves for 2 s, then
        // holds the connection open until told to close it.
        let release = fixtures.path("long-release-\(pod.name)")
        files.append(release)
        let stall = """
            import os, select, socket, sys, time
            size = 16 << 20
            s = socket.create_connection(('\(PodStandIn.podAddress)', 8080), timeout=10)
            s.sendall(b'POST /stall HTTP/1.1\\r\\nHost: pod\\r\\nContent-Length: %d\\r\\n\\r\\n' % size)
            s.setblocking(False)
            chunk = b'x' * 65536
            sent, moved = 0, time.monotonic()
            while sent < size and time.monotonic() - moved < 2:
                select.select([], [s], [], 0.2)
                try:
                    sent += s.send(chunk[:size - sent])
                    moved = time.monotonic()
                except BlockingIOError:
                    pass
            print('sent', sent, flush=True)
            deadline = time.monotonic() + 60
            while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
                time.sleep(0.05)
            s.close()
            print('closed', flush=True)
            """
        let stallLog = fixtures.path("long-stall-\(pod.name).out")
        files.append(stallLog)
        let staller = try PodStandIn.start(
            ["ip", "netns", "exec", pod.clientNamespace, "python3", "-c", stall, release], log: stallLog)
        processes.append(staller)
        func stallText() -> String { (try? String(contentsOfFile: stallLog, encoding: .utf8)) ?? "" }
        try PodStandIn.waitUntil("the stalled upload", timeout: 40) {
            stallText().contains("sent ") || !staller.isRunning
        }
        #expect(session.outputText.contains("/stall reading"), "\(session.outputText)")
        let sent = stallText().split(separator: "\n").first { $0.hasPrefix("sent ") }.flatMap { Int($0.dropFirst(5)) }
        print(
            "LongSession failure paths: the stalled client sent \(sent.map(String.init) ?? "?") of \(16 << 20) bytes before nothing moved for 2 s"
        )
        let during = try ProcessResources(pid: session.pid)
        print("LongSession failure paths: while stalled: \(during)")

        // (c) While that connection is held, a new stolen connection is answered, and the program's remote file
        // read (the pod's /etc/hostname) is served in the same session.
        let answers = try pod.client(["GET /after"]) + pod.client(["GET /file"])
        #expect(answers.count == 2 && answers[0].hasPrefix("local \(client) "), "\(answers)")
        #expect(answers.count == 2 && answers[1].hasPrefix("\(PodStandIn.hostname) "), "\(answers)")
        try PodStandIn.waitUntil("the remote read in the log", timeout: 5) {
            session.logText.split(separator: "\n").contains {
                $0.contains("\"/etc/hostname\"") && $0.contains("→ remote")
            }
        }

        // The stalled client closes, the program lets go of its end; then the session is as before.
        try Data().write(to: URL(fileURLWithPath: release))
        #expect(exits(staller.processIdentifier, within: 10), "the stalled client still runs")
        staller.waitUntilExit()
        #expect(try pod.client(["GET /release"]).first?.hasPrefix("released 1 ") == true)
        let last = try connections(from: pod, count: Self.warmUp, first: Self.warmUp, expecting: "local \(client)")
        #expect(last.matched == Self.warmUp, "\(last)")
        let after = try resources(of: session)

        check(
            "failure paths", connections: 2 * Self.warmUp + 5, seconds: Date().timeIntervalSince(connecting),
            total: Date().timeIntervalSince(started), before: before, after: after)
        end(session)
    }

    // MARK: - Readings

    /// What /proc/PID/status says of a process: its threads, and its VmSize and VmRSS in kB.
    struct ProcessResources: CustomStringConvertible {
        var threads: Int
        let vmSize: Int
        let vmRSS: Int
        /// Open descriptors (/proc/PID/fd).
        let descriptors: Int
        /// The threads at the first reading, when they were more than `threads` (see `resources(of:)`).
        var threadsAtFirst: Int?

        init(pid: Int32) throws {
            let status = try ProcessStatus(pid: pid)
            (threads, vmSize, vmRSS) = (status.threads, status.virtualKB, status.residentKB)
            descriptors = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count
        }

        var threadsText: String { "\(threads)" + (threadsAtFirst.map { " (\($0) at first)" } ?? "") }
        var description: String {
            "threads \(threadsText), descriptors \(descriptors), VmSize \(vmSize) kB, VmRSS \(vmRSS) kB"
        }
    }

    /// The trace process's reading. Threads that serve a connection which just ended may still be on their
    /// way out: the reading is taken again for up to 2 s while it shows more than the bound.
    func resources(of session: TracedSession) throws -> ProcessResources {
        let comm = try String(contentsOfFile: "/proc/\(session.pid)/comm", encoding: .utf8)
        guard comm == "sysmirror\n" else {
            throw FixtureError(description: "pid \(session.pid) is \(comm), not the trace process")
        }
        var reading = try ProcessResources(pid: session.pid)
        let first = reading.threads
        let deadline = Date().addingTimeInterval(2)
        while reading.threads > Self.threadBound && Date() < deadline {
            usleep(50_000)
            reading = try ProcessResources(pid: session.pid)
        }
        if first > reading.threads { reading.threadsAtFirst = first }
        return reading
    }

    /// Prints the readings on one line and checks them.
    func check(
        _ scenario: String, connections: Int, seconds: Double, total: Double, before: ProcessResources,
        after: ProcessResources
    ) {
        let time = String(format: "%.1f s (%.1f s with setup)", seconds, total)
        print(
            "LongSession \(scenario): \(connections) connections in \(time); threads \(before.threadsText) → \(after.threadsText) (bound \(Self.threadBound)); descriptors \(before.descriptors) → \(after.descriptors); VmSize \(before.vmSize) → \(after.vmSize) kB (\(String(format: "%+.1f", Double(after.vmSize - before.vmSize) * 100 / Double(before.vmSize)))%); VmRSS \(before.vmRSS) → \(after.vmRSS) kB (\(after.vmRSS - before.vmRSS >= 0 ? "+" : "")\(after.vmRSS - before.vmRSS) kB)"
        )
        #expect(
            before.threads <= Self.threadBound,
            "\(scenario): \(before.threads) threads after \(Self.warmUp) connections, more than \(Self.threadBound)")
        #expect(
            after.threads <= Self.threadBound,
            "\(scenario): \(after.threads) threads after \(connections) connections, more than \(Self.threadBound)")
        // A few may belong to a connection still ending.
        #expect(
            after.descriptors <= before.descriptors + 4,
            "\(scenario): \(before.descriptors) descriptors → \(after.descriptors)")
        #expect(
            Double(abs(after.vmSize - before.vmSize)) <= Self.vmSizeTolerance * Double(before.vmSize),
            "\(scenario): VmSize \(before.vmSize) kB → \(after.vmSize) kB")
        #expect(
            abs(after.vmRSS - before.vmRSS) <= Self.vmRSSToleranceKB,
            "\(scenario): VmRSS \(before.vmRSS) kB → \(after.vmRSS) kB")
    }

    // MARK: - Sessions and clients

    func makePod(network: Bool = false, incoming: Bool = false) throws -> PodStandIn {
        let pod = try PodStandIn(network: network, incoming: incoming)
        pods.append(pod)
        return pod
    }

    /// A `sysmirror trace` left running as nobody in the developer's namespace: its output, its log.
    final class TracedSession: @unchecked Sendable {  // set once
        let process: Process
        let output: String
        let log: String

        init(process: Process, output: String, log: String) {
            self.process = process
            self.output = output
            self.log = log
        }

        /// The trace process: `ip netns exec`, `setpriv` and `unblocked` each exec the next.
        var pid: Int32 { process.processIdentifier }
        var outputText: String { (try? String(contentsOfFile: output, encoding: .utf8)) ?? "" }
        var logText: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
        /// The requests the gofixture server printed (path and X-Dev), one a line.
        var requests: [String] {
            outputText.split(separator: "\n").filter { $0.hasPrefix("/") }.map { String($0.split(separator: " ")[0]) }
        }
        /// The program's pid: the first line of the log is its execve.
        var programPID: Int32? {
            logText.split(separator: "\n").first { $0.hasPrefix("[pid ") }.flatMap {
                Int32($0.dropFirst("[pid ".count).prefix { $0 != "]" })
            }
        }

        /// The trace process's exit status, once it exits within `seconds` (nil if it does not).
        func wait(seconds: Double) -> Int32? {
            let deadline = Date().addingTimeInterval(seconds)
            while process.isRunning && Date() < deadline { usleep(10_000) }
            guard !process.isRunning else { return nil }
            process.waitUntilExit()
            return process.terminationStatus
        }

        /// Sends `signal` to sysmirror and waits up to 10 s; then kills the program and sysmirror (Foundation
        /// waits for every process that holds the output).
        func end(with signal: Int32 = SIGTERM) {
            guard process.isRunning else { return process.waitUntilExit() }
            let program = programPID
            kill(pid, signal)
            if signal == SIGKILL, let program { kill(program, SIGKILL) }
            if wait(seconds: 10) == nil {
                if let program { kill(program, SIGKILL) }
                if process.isRunning { kill(pid, SIGKILL) }
                process.waitUntilExit()
            }
        }
    }

    /// Ends a session with SIGTERM and says how long sysmirror took to exit, and with what status.
    func end(_ session: TracedSession) {
        let started = Date()
        session.end()
        sessions.removeAll { $0 === session }
        print(
            "LongSession: sysmirror exited \(String(format: "%.1f", Date().timeIntervalSince(started))) s after SIGTERM, status \(session.process.terminationStatus)"
        )
    }

    /// `sysmirror trace` as nobody in the developer's namespace, with the agent at `agent` (the pod's unix
    /// socket unless given), left running.
    func startTrace(
        _ pod: PodStandIn, _ program: [String], agent: String? = nil, options: [String] = []
    ) throws -> TracedSession {
        let name = UUID().uuidString
        let output = fixtures.path("long-\(name).out"), log = fixtures.path("long-\(name).log")
        files += [output, log]
        let command =
            ["ip", "netns", "exec", pod.developerNamespace]
            + ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--"]
            + [fixtures.sysmirror, "trace", "--log", log, "--agent", agent ?? "unix:\(pod.socket)"]
            + ["--token-file", pod.tokenFile] + options + ["--"] + program
        let session = TracedSession(process: try PodStandIn.start(command, log: output), output: output, log: log)
        sessions.append(session)
        return session
    }

    /// A traced local server (the gofixture's, answering "local CLIENT-IP", unless given), once it listens.
    func startLocal(_ pod: PodStandIn, _ options: [String], program: [String]? = nil, agent: String? = nil) throws
        -> TracedSession
    {
        let session = try startTrace(
            pod, program ?? [fixtures.path("gofixture"), "serve", "local", "127.0.0.1:8080"], agent: agent,
            options: options)
        try PodStandIn.waitUntil("the local server's listen") {
            session.logText.contains("] listen(") || !session.process.isRunning
        }
        return session
    }

    /// `count` connections from the pod's client namespace to the pod's :8080, one after another, each a new
    /// connection with one GET /nI (I from `first`) read to its end and closed. Returns how many answers began
    /// with `expecting`, and those that did not, with how long they took. `header`: a header line each request
    /// carries. One Python process makes them all
    /// (5 s allowed for each); it stops after 5 failures or 120 s (a healthy run makes 3,000 in under 20 s).
    func connections(from pod: PodStandIn, count: Int, first: Int, expecting: String, header: String = "") throws
        -> ClientRun
    {
        let script = """
            import http.client, json, sys, time
            first, count, expecting = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
            headers = dict([sys.argv[4].split(': ')]) if sys.argv[4] else {}
            matched, made, others, times = 0, 0, [], []
            started = time.monotonic()
            for i in range(first, first + count):
                if len(others) >= 5 or time.monotonic() - started > 120:
                    break
                made += 1
                begun = time.monotonic()
                try:
                    c = http.client.HTTPConnection('\(PodStandIn.podAddress)', 8080, timeout=5)
                    c.request('GET', '/n%d' % i, headers=headers)
                    answer = c.getresponse().read().decode().strip()
                    c.close()
                except Exception as error:
                    answer = repr(error)
                times.append(time.monotonic() - begun)
                if answer.startswith(expecting):
                    matched += 1
                else:
                    others.append('%d: %s' % (i, answer))
            times.sort()
            print(json.dumps({'matched': matched, 'made': made, 'others': others, 'seconds': round(time.monotonic() - started, 1),
                              'p50 ms': round(times[len(times) // 2] * 1000, 1), 'max ms': round(times[-1] * 1000, 1)}))
            """
        let outcome = try Run.process(
            [
                "ip", "netns", "exec", pod.clientNamespace, "python3", "-c", script, "\(first)", "\(count)", expecting,
                header,
            ],
            directory: fixtures.directory, timeout: 200)
        guard outcome.status == 0,
            let result = try? JSONSerialization.jsonObject(with: Data(outcome.stdout.utf8)) as? [String: Any],
            let matched = result["matched"] as? Int
        else {
            throw FixtureError(description: "the client failed (\(outcome.status)): \(outcome.stdout)\(outcome.stderr)")
        }
        let run = ClientRun(
            matched: matched, description: outcome.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        print("LongSession client, GET /n\(first) to /n\(first + count - 1): \(run)")
        return run
    }

    /// What `connections` saw: how many answers were as expected, and the client's summary (made, others,
    /// seconds, p50 and max per connection).
    struct ClientRun: CustomStringConvertible {
        let matched: Int
        let description: String
    }

    /// Waits (up to 60 s) until the local program printed `count` requests: the mirrored copies.
    func waitForCopies(_ session: TracedSession, count: Int) throws {
        var seen = 0
        do {
            try PodStandIn.waitUntil("\(count) copies", timeout: 60) {
                seen = session.requests.count
                return seen >= count || !session.process.isRunning
            }
        } catch {
            throw FixtureError(description: "\(seen) of \(count) copies arrived in 60 s")
        }
    }
}
