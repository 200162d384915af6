import Foundation
import Synchronization
import Testing

/// A link to an agent on TCP that breaks and comes back, as a `kubectl port-forward` that drops and is
/// restarted on the same local port: the session goes on, calls made during the gap wait for the link, and
/// the log says what happened. One that never comes back fails the calls after the wait, without a hang.
@Suite("A link that breaks", .enabled(if: PodStandIn.isAvailable, "needs root for namespaces"), .serialized)
final class LinkCutTests {
    let fixtures = Fixtures.shared
    private var pods: [PodStandIn] = []
    private var agents: [ForwardedAgent] = []

    deinit {
        for agent in agents { agent.stop() }
        for pod in pods { pod.tearDown() }
    }

    func forwardedAgent(network: Bool = false) throws -> ForwardedAgent {
        let pod = try PodStandIn(network: network)
        pods.append(pod)
        let agent = try ForwardedAgent(in: pod)
        agents.append(agent)
        return agent
    }

    /// `pod.trace` on a thread of its own, left running; the returned function waits (up to `seconds`) for
    /// its outcome and log, nil when it did not end in time.
    static func traceInBackground(
        _ program: [String], pod: PodStandIn, agentAddress: String, options: [String] = []
    ) -> (_ seconds: Int) -> (Outcome, [String])? {
        let traced = Mutex<(Outcome, [String])?>(nil)
        let ended = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            traced.withLock { $0 = try? pod.trace(program, options: options, agentAddress: agentAddress, timeout: 90) }
            ended.signal()
        }
        return { seconds in
            guard ended.wait(timeout: .now() + .seconds(seconds)) == .success else { return nil }
            return traced.withLock { $0 }
        }
    }

    /// A traced program that says it runs (creates `started`), then reads the pod's /config/app.yaml every
    /// `pause` seconds until `done` exists, printing each outcome with the milliseconds it took.
    func reader(started: String, done: String, pause: Double = 0.1) -> [String] {
        [
            "/usr/bin/python3", "-c",
            """
            import os, time
            open('\(started)', 'w').close()
            while not os.path.exists('\(done)'):
                start = time.monotonic()
                try:
                    open('/config/app.yaml').read()
                    outcome = 'ok'
                except OSError:
                    outcome = 'failed'
                print(outcome, int((time.monotonic() - start) * 1000), flush=True)
                time.sleep(\(pause))
            """,
        ]
    }

    /// The reader (`pause` between reads) under trace through `forwarded`, whose link is cut `before` seconds
    /// after it starts and back 1 s later, and which ends `after` seconds after that: its outcome and log,
    /// and its reads, each an outcome and the milliseconds it took.
    func readAcrossACut(
        _ forwarded: ForwardedAgent, pause: Double = 0.1, options: [String] = [], before: Double, after: Double
    ) throws -> (outcome: Outcome, log: [String], reads: [[Substring]]) {
        let started = fixtures.path("started-\(UUID().uuidString)"), done = fixtures.path("done-\(UUID().uuidString)")
        defer { for file in [started, done] { try? FileManager.default.removeItem(atPath: file) } }
        let traced = Self.traceInBackground(
            reader(started: started, done: done, pause: pause), pod: forwarded.pod, agentAddress: forwarded.address,
            options: options)
        try PodStandIn.waitUntil("the program") { FileManager.default.fileExists(atPath: started) }
        usleep(UInt32(before * 1_000_000))
        forwarded.cut()
        usleep(1_000_000)
        try forwarded.restore()
        usleep(UInt32(after * 1_000_000))
        FileManager.default.createFile(atPath: done, contents: nil)
        let (outcome, log) = try #require(traced(90))
        return (outcome, log, outcome.stdout.split(separator: "\n").map { $0.split(separator: " ") })
    }

    @Test("Cut for a second: every read after the link is back succeeds, none hangs, and the log says so")
    func cutAndBack() throws {
        // Back within the next attempt (0.1 s doubling, 2 s at most), then a few more reads.
        let (outcome, log, reads) = try readAcrossACut(try forwardedAgent(), before: 0.5, after: 2.5)
        #expect(outcome.status == 0, "\(outcome.stderr)")
        // A read made while the link was down waited for it; one half answered at the cut may fail; once
        // the link is back, every read succeeds.
        #expect(reads.contains { ($0.last.flatMap { Int($0) } ?? 0) >= 400 }, "a read waited: \(outcome.stdout)")
        #expect(reads.filter { $0.first == "failed" }.count <= 1, "\(outcome.stdout)")
        #expect(reads.suffix(5).allSatisfy { $0.first == "ok" }, "\(outcome.stdout)")
        #expect(outcome.stderr.contains("connecting again for up to 30 s"), "\(outcome.stderr)")
        #expect(outcome.stderr.contains("is back"), "\(outcome.stderr)")
        #expect(!log.isEmpty)
    }

    /// Each read takes a round trip of 300 ms and the next follows at once: one is in flight at the cut.
    @Test("A read in flight at the cut is asked again once the link is back: it waits, and no read fails")
    func inFlightAtTheCut() throws {
        let forwarded = try ForwardedAgent(podWithNetwork: false, delayMilliseconds: 150)
        agents.append(forwarded)
        let (outcome, _, reads) = try readAcrossACut(
            forwarded, pause: 0, options: ["--fs-cache", "off"], before: 1, after: 3)
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(reads.count >= 4 && reads.allSatisfy { $0.first == "ok" }, "\(outcome.stdout)")
        // The read cut in flight waited for the link, a second at least.
        #expect(reads.contains { ($0.last.flatMap { Int($0) } ?? 0) >= 1000 }, "\(outcome.stdout)")
        #expect(outcome.stderr.contains("in flight at the cut will be asked again"), "\(outcome.stderr)")
    }

    @Test("A connection relayed at the cut is reset, and the log names it; a new one after the cut works")
    func connectionAtTheCut() throws {
        let forwarded = try forwardedAgent(network: true)
        let started = fixtures.path("started-\(UUID().uuidString)"), flag = fixtures.path("cut-\(UUID().uuidString)")
        defer { for file in [started, flag] { try? FileManager.default.removeItem(atPath: file) } }
        let redis = PodStandIn.Service.redis
        let program = [
            "/usr/bin/python3", "-c",
            """
            import os, socket, time
            def ping(c):
                c.sendall(b'PING\\r\\n')
                return c.recv(100).decode().strip()
            kept = socket.create_connection(('\(redis)', 6379))
            print('before', ping(kept), flush=True)
            open('\(started)', 'w').close()
            while not os.path.exists('\(flag)'):
                time.sleep(0.05)
            try:
                print('kept', ping(kept) or 'closed')
            except (ConnectionResetError, BrokenPipeError):
                print('kept reset')
            print('after', ping(socket.create_connection(('\(redis)', 6379))))
            """,
        ]
        let traced = Self.traceInBackground(program, pod: forwarded.pod, agentAddress: forwarded.address)
        try PodStandIn.waitUntil("the program") { FileManager.default.fileExists(atPath: started) }
        forwarded.cut()
        usleep(500_000)
        try forwarded.restore()
        FileManager.default.createFile(atPath: flag, contents: nil)
        let (outcome, _) = try #require(traced(60))
        #expect(
            outcome.stdout == "before +PONG\nkept reset\nafter +PONG\n",
            "\(outcome.stderr)")
        #expect(outcome.stderr.contains("connection to \(redis):6379"), "\(outcome.stderr)")
        #expect(outcome.stderr.contains("reset after"), "\(outcome.stderr)")
    }

    @Test("Never back: the reads fail with EIO after the wait, and the program ends")
    func cutForGood() throws {
        let forwarded = try forwardedAgent()
        let (pod, address) = (forwarded.pod, forwarded.address)
        // The program says it runs, then its read waits for the cut: the flag appears once the link is down.
        let started = fixtures.path("started-\(UUID().uuidString)"), flag = fixtures.path("cut-\(UUID().uuidString)")
        defer { for file in [started, flag] { try? FileManager.default.removeItem(atPath: file) } }
        let program = [
            "/bin/busybox", "sh", "-c",
            "/bin/busybox touch \(started); while [ ! -e \(flag) ]; do /bin/busybox sleep 0.1; done; "
                + "/bin/busybox cat /config/app.yaml; echo status $?",
        ]
        let traced = Self.traceInBackground(program, pod: pod, agentAddress: address)
        try PodStandIn.waitUntil("the program") { FileManager.default.fileExists(atPath: started) }
        forwarded.cut()
        FileManager.default.createFile(atPath: flag, contents: nil)
        let (outcome, _) = try #require(traced(60))
        #expect(outcome.stdout.contains("status 1"), "\(outcome.stdout)")
        #expect(outcome.stderr.contains("did not come back within 30 s"), "\(outcome.stderr)")
    }

    @Test("A stolen port is taken again once the link is back, and the pod's clients reach the program again")
    func stealAfterCut() throws {
        let pod = try PodStandIn(incoming: true)
        pods.append(pod)
        let forwarded = try ForwardedAgent(in: pod)
        agents.append(forwarded)
        let output = fixtures.path("steal-cut-\(pod.name).out"), log = fixtures.path("steal-cut-\(pod.name).log")
        defer { for file in [output, log] { try? FileManager.default.removeItem(atPath: file) } }
        let server = try pod.startTrace(
            [fixtures.path("gofixture"), "serve", "local", "127.0.0.1:8080"], options: ["--incoming", "steal"],
            output: output, log: log, agentAddress: forwarded.address)
        defer {
            kill(server.processIdentifier, SIGTERM)
            server.waitUntilExit()
        }
        func text(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }
        try PodStandIn.waitUntil("the stolen port") { text(log).contains("port 8080 of the pod: stolen") }
        #expect(try pod.client(["GET /before"]).first?.hasPrefix("local ") == true)
        forwarded.cut()
        sleep(1)
        try forwarded.restore()
        try PodStandIn.waitUntil("the port taken again", timeout: 20) { text(output).contains("is stolen again") }
        #expect(try pod.client(["GET /after"]).first?.hasPrefix("local ") == true, "\(text(output))")
    }
}
