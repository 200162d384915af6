// Resources of a long session (issue 12): sysmirror's threads and memory after thousands of connections, one
// after another, against a reading after the first hundred. Three sessions: a steal session whose local server
// answers 3,000 new connections, a mirror session copying 1,000, and a traced program making 10,000 outgoing
// connections through an agent reached over TCP (the port-forward stand-in). LongSessionTests checks the same
// sessions against bounds; this prints what they measure.
import Foundation
import LinuxSystem

/// Connections made before the first reading.
let warmUp = 100

extension ProcessStatus {
    var vmSize: Int { virtualKB }
    var vmRSS: Int { residentKB }

    /// The reading of `process`, which must be `sysmirror trace` itself. Threads that served a connection
    /// which just ended may still be on their way out: read again every 100 ms until two readings show as many
    /// threads (2 s at most).
    static func ofTrace(_ process: Process) throws -> ProcessStatus {
        let pid = process.processIdentifier
        let name = (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)) ?? "gone"
        guard name == "sysmirror\n" else {
            let what = name.trimmingCharacters(in: .newlines)
            throw BenchError(description: "pid \(pid) is \(what), not sysmirror trace")
        }
        var reading = try ProcessStatus(pid: pid)
        for _ in 0..<20 {
            usleep(100_000)
            let next = try ProcessStatus(pid: pid)
            if next.threads == reading.threads { return next }
            reading = next
        }
        return reading
    }
}

/// The whole number after `key` on a line of `output`, or 0.
func integer(_ key: String, in output: String) -> Int {
    let number = value(key, in: output)
    return number.isFinite ? Int(number) : 0
}

/// One session's row: its readings after `warmUp` connections and after all of them.
struct LongSession {
    let name: String
    let connections: Int
    /// Connections the client saw answered as expected.
    let answered: Int
    /// What sysmirror's log says of them, for instance "3000 stolen".
    let logged: String
    /// From the first connection to the last reading.
    let seconds: Double
    let before: ProcessStatus
    let after: ProcessStatus
}

/// The three sessions, one after another, and their table.
func resourcesOfLongSessions() throws {
    let started = Date()
    var sessions: [LongSession] = []
    try IncomingPod.with(tag: "r") { stand in
        sessions.append(try incomingSession(stand, mode: "steal", connections: 3_000))
        sessions.append(try incomingSession(stand, mode: "mirror", connections: 1_000))
    }
    sessions.append(try outgoingSession(connections: 10_000))

    print("Resources of a long session: /proc/PID/status of `sysmirror trace --log FILE` after the first \(warmUp)")
    print("connections → after all of them (before the session ends); new connections one after another")
    print(
        pad("case", 38) + pad("connections", 13) + pad("answered", 10) + pad("sysmirror log", 18) + pad("s", 7)
            + pad("threads", 10) + pad("VmSize MiB", 19) + pad("Δ kB", 9) + pad("VmRSS MiB", 15) + "Δ kB")
    func mebibytes(_ kilobytes: Int) -> String { format(Double(kilobytes) / 1024) }
    for session in sessions {
        let (before, after) = (session.before, session.after)
        print(
            pad(session.name, 38) + pad(String(session.connections), 13) + pad(String(session.answered), 10)
                + pad(session.logged, 18) + pad(format(session.seconds), 7)
                + pad("\(before.threads) → \(after.threads)", 10)
                + pad("\(mebibytes(before.vmSize)) → \(mebibytes(after.vmSize))", 19)
                + pad(String(format: "%+d", after.vmSize - before.vmSize), 9)
                + pad("\(mebibytes(before.vmRSS)) → \(mebibytes(after.vmRSS))", 15)
                + String(format: "%+d", after.vmRSS - before.vmRSS))
    }
    print("steal and mirror: a python3 client in the pod's client namespace, one GET per connection (HTTP/1.0) to the")
    print("pod's :9090; the local server is httpbench serve; readings wait until sysmirror's log shows each connection")
    print("ended. outgoing: a traced python3 loop, one GET per connection to the pod's Go server, through an agent on")
    print("TCP behind two socat hops (the port-forward stand-in), waiting after \(warmUp) connections for the reading.")
    print("threads read again every 100 ms until two readings agree; LongSessionTests allows threads ≤ 8,")
    print("VmSize ±10%, VmRSS ±5 MiB")
    print("section: \(format(Date().timeIntervalSince(started))) s with setup")
    print("")
}

/// A steal or mirror session of the local server, and `connections` new connections from the pod's client.
func incomingSession(_ stand: IncomingPod, mode: String, connections: Int) throws -> LongSession {
    let log = "\(work)/long-\(mode).log"
    let session = try stand.session(mode, log: log)
    defer { stand.servers.stop(session, signal: SIGTERM) }
    let ended = "of the pod ended: \(mode == "steal" ? "stolen" : "mirrored")"
    func logged(_ text: String) -> Int {
        let lines = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        return lines.split(separator: "\n").count(where: { $0.contains(text) })
    }
    /// Until every answered connection (a copy, when mirrored) has ended in sysmirror's log.
    func waitForEnds(_ count: Int) throws {
        do {
            try waitUntil("end of \(count) connections in sysmirror's log", seconds: 60) {
                logged(ended) >= count || !session.isRunning
            }
        } catch {
            throw BenchError(description: "\(logged(ended)) of \(count) connections ended in sysmirror's log in 60 s")
        }
        guard session.isRunning else { throw BenchError(description: "sysmirror trace --incoming \(mode) exited") }
    }
    let start = Date()
    var answered = try newConnections(from: stand, first: 0, count: warmUp)
    try waitForEnds(answered)
    let before = try ProcessStatus.ofTrace(session)
    answered += try newConnections(from: stand, first: warmUp, count: connections - warmUp)
    try waitForEnds(answered)
    let after = try ProcessStatus.ofTrace(session)
    let seconds = Date().timeIntervalSince(start)
    let said: String
    if mode == "steal" {
        said = "\(logged("of the pod (stolen)")) stolen"
    } else {
        let cut = logged("ended: mirrored (cut short)")
        said = "\(logged("ended: mirrored,")) copied" + (cut > 0 ? ", \(cut) cut" : "")
    }
    return LongSession(
        name: mode == "steal" ? "steal: local server answers" : "mirror: copies to the local server",
        connections: connections, answered: answered, logged: said, seconds: seconds, before: before, after: after)
}

/// `count` new connections from the pod's client namespace to the pod's :9090, one after another, each with
/// one GET /nI (I from `first`) read to its end; returns how many were answered. One python3 process makes
/// them all (5 s allowed for each); it stops after 5 failures or 300 s.
func newConnections(from stand: IncomingPod, first: Int, count: Int) throws -> Int {
    let script = """
        import socket, sys, time
        host, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        answered, made, failures, started = 0, 0, [], time.monotonic()
        for i in range(first, first + count):
            if len(failures) >= 5 or time.monotonic() - started > 300:
                break
            made += 1
            try:
                s = socket.create_connection((host, 9090), timeout=5)
                s.sendall(b'GET /n%d HTTP/1.0\\r\\nHost: pod\\r\\n\\r\\n' % i)
                answer = b''
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
                s.close()
            except OSError as error:
                answer = repr(error).encode()
            if answer.startswith(b'HTTP/1.0 200') and answer.endswith(b'\\r\\n\\r\\npod\\n'):
                answered += 1
            else:
                failures.append('%d: %r' % (i, answer[:120]))
        print('answered', answered)
        print('made', made)
        for failure in failures:
            print('failed', failure)
        """
    let output = run(
        stand.inClient + ["/usr/bin/python3", "-c", script, IncomingPod.address, String(first), String(count)]
    ).output
    let answered = integer("answered", in: output)
    for line in output.split(separator: "\n") where line.hasPrefix("failed ") { print("resources: \(line)") }
    return answered
}

/// A traced python3 loop in the developer's namespace making `connections` outgoing connections, one GET
/// each, to a Go server in the pod's, through an agent on TCP behind the port-forward stand-in.
func outgoingSession(connections: Int) throws -> LongSession {
    let pod = "sysmirror-bench-rpod-\(getpid())", developer = "sysmirror-bench-rdev-\(getpid())"
    return try withNamespaces([pod, developer]) { servers in
        let address = "10.96.0.50"
        run(["ip", "-n", pod, "addr", "add", "\(address)/32", "dev", "lo"])
        try buildHTTPBench()
        _ = try servers.start(["ip", "netns", "exec", pod, "\(work)/httpbench", "serve", "\(address):9090"])
        let target = try startTarget(in: pod, servers: servers)
        let agent = try startPortForwardStandIn(
            pod: pod, developer: developer, target: target, name: "long-forward", servers: servers)
        usleep(300_000)  // the server's listen
        let log = "\(work)/long-outgoing.log"
        let paused = "\(work)/long-paused", finished = "\(work)/long-finished"
        // Waits (for a file to appear, 120 s at most) after `warm_up` connections and after the last, so that
        // the trace process can be read; stops after 20 failures or 600 s of connections.
        let script = """
            import os, socket, sys, time
            host, port, total, warm_up, paused, finished = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
            def wait_for(path):
                deadline = time.monotonic() + 120
                while not os.path.exists(path) and time.monotonic() < deadline:
                    time.sleep(0.02)
            ok, bad, started = 0, 0, time.monotonic()
            for i in range(total):
                if i == warm_up:
                    print('paused', ok, flush=True)
                    wait_for(paused)
                if bad >= 20 or time.monotonic() - started > 600:
                    break
                try:
                    s = socket.create_connection((host, port), timeout=10)
                    s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')
                    answer = b''
                    while True:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        answer += chunk
                    s.close()
                except OSError as error:
                    answer = repr(error).encode()
                if answer.startswith(b'HTTP/1.0 200') and answer.endswith(b'\\r\\n\\r\\npod\\n'):
                    ok += 1
                else:
                    bad += 1
                    if bad <= 5:
                        print('failed', i, answer[:120], flush=True)
            print('finished', ok, flush=True)
            wait_for(finished)
            """
        let session = try servers.start(
            ["ip", "netns", "exec", developer] + [
                options.sysmirror, "trace", "--log", log, "--agent", agent, "--token-file", "\(work)/token", "--",
                "/usr/bin/python3", "-c", script, address, "9090", String(connections), String(warmUp), paused,
                finished,
            ], log: "long-outgoing.err", output: "long-outgoing.out")
        defer { servers.stop(session, signal: SIGTERM) }
        func said() -> String { (try? String(contentsOfFile: "\(work)/long-outgoing.out", encoding: .utf8)) ?? "" }
        func exited() throws {
            guard session.isRunning else {
                throw BenchError(description: "the traced loop exited early: \(said())")
            }
        }
        let start = Date()
        try waitUntil("pause after \(warmUp) outgoing connections", seconds: 120) {
            said().contains("paused ") || !session.isRunning
        }
        try exited()
        let before = try ProcessStatus.ofTrace(session)
        _ = FileManager.default.createFile(atPath: paused, contents: nil)
        try waitUntil("end of \(connections) outgoing connections", seconds: 900) {
            said().contains("finished ") || !session.isRunning
        }
        try exited()
        let after = try ProcessStatus.ofTrace(session)
        let seconds = Date().timeIntervalSince(start)
        _ = FileManager.default.createFile(atPath: finished, contents: nil)
        try? waitUntil("the traced loop's exit", seconds: 30) { !session.isRunning }
        for line in said().split(separator: "\n") where line.hasPrefix("failed ") { print("resources: \(line)") }
        let relayed = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").count(where: {
            $0.contains("connect(") && $0.contains("\(address):9090") && $0.contains("through \(agent)")
        })
        return LongSession(
            name: "outgoing via TCP agent (port-fwd)", connections: connections,
            answered: integer("finished", in: said()), logged: "\(relayed) relayed", seconds: seconds,
            before: before, after: after)
    }
}
