// The cluster link (issue 13): what each operation of a program costs, in round trips, when its agent is reached
// as through `kubectl port-forward`, 10 to 100 ms away. A pod stand-in (a name server, an HTTP server, a UDP
// echo and a container, in a network namespace of its own) serves its container through `sysmirror agent` on
// TCP; a socat hop takes that to a unix socket, and the delaying port-forward stand-in
// (Tests/Fixtures/delaying-forward) takes it to 127.0.0.1:7001 in the developer's namespace, holding each chunk
// 10 ms each way (RTT 20 ms), then not at all. bench/programs/cluster-link.py times each operation inside the
// pod's namespace (what the pod itself pays) and under `sysmirror trace --agent` in the developer's.
import Foundation

/// The stand-in's addresses, on the pod namespace's loopback only.
enum ClusterAddress {
    static let dns = "10.96.0.10", web = "10.96.0.20", echo = "10.96.0.40"
}

/// What cluster-link.py times, by its name there.
enum LinkOperation: String {
    /// Start-up: whole processes, `true` alone or under trace.
    case startUp = "spawn"
    case read, stat, listdir
    case lookupFull = "lookup-full", lookupShort = "lookup-short"
    case connect, request
    case getByName = "get-by-name"
    case burst, udp
}

/// One row of the table: which operation cluster-link.py runs, and what it may add over the pod's own time.
struct LinkRow {
    let name: String
    let operation: LinkOperation
    /// Timed as the first try of a fresh process, one process per try (a lookup no cache can answer yet).
    var firstInProcess = false
    /// Round trips added at most, or (start-up) taken in all; nil: no target (shown for what it tells).
    let target: Double?
    var targetIsTotal = false
    /// Through a second stand-in that sets up no stream: the port-forward answers at once, as the connection
    /// that found a `--target` agent answering does, which becomes the session's link.
    var answersAtOnce = false

    static let all = [
        LinkRow(
            name: "start-up, the port-forward answering", operation: .startUp, target: 2.5, targetIsTotal: true,
            answersAtOnce: true),
        LinkRow(name: "start-up, a new port-forward connection", operation: .startUp, target: nil, targetIsTotal: true),
        LinkRow(name: "open+read of a 2 KiB remote file, first", operation: .read, firstInProcess: true, target: 1.2),
        LinkRow(name: "open+read of it again (file cache)", operation: .read, target: 1.2),
        LinkRow(name: "stat of it", operation: .stat, target: 1.2),
        LinkRow(name: "listdir of a remote directory (20)", operation: .listdir, target: 1.2),
        LinkRow(
            name: "getaddrinfo(full name), first in process", operation: .lookupFull, firstInProcess: true,
            target: 1.2),
        LinkRow(name: "getaddrinfo(full name), repeated", operation: .lookupFull, target: 1.2),
        LinkRow(
            name: "getaddrinfo(\"web\"), first in process", operation: .lookupShort, firstInProcess: true, target: 1.2
        ),
        LinkRow(name: "getaddrinfo(\"web\"), repeated", operation: .lookupShort, target: 1.2),
        LinkRow(name: "TCP connect", operation: .connect, target: 1.2),
        LinkRow(name: "HTTP request, kept-alive connection", operation: .request, target: 1.2),
        LinkRow(
            name: "HTTP GET http://web:8080/, new connection", operation: .getByName, firstInProcess: true,
            target: 3.3),
        LinkRow(name: "20 TCP connects at once (threads)", operation: .burst, target: 1.5),
        LinkRow(name: "UDP request and answer", operation: .udp, target: 1.2),
    ]
}

/// What the client measured: each try's milliseconds, or why the operation failed.
enum LinkResult {
    case times([Double])
    case failed(String)
}

/// A server started with posix_spawn: dnsmasq closes every descriptor it inherits at start, which Foundation's
/// Process takes for an exit that it then waits for, forever (as PodStandIn's SpawnedService says).
final class SpawnedServer {
    let pid: pid_t

    init(_ command: [String]) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for fd: Int32 in [0, 1, 2] { posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", O_RDWR, 0) }
        let arguments = command.map { strdup($0) } + [nil]
        defer { arguments.forEach { free($0) } }
        var pid: pid_t = 0
        let result = posix_spawnp(&pid, command[0], &actions, nil, arguments, environ)
        guard result == 0 else { throw BenchError(description: "cannot start \(command[0]): \(result)") }
        self.pid = pid
    }

    func stop() {
        kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
    }
}

/// One build's way to the pod: its agent on 127.0.0.1:`agentPort` in the pod's namespace, a socat hop from a
/// unix socket to it, and (per delay) the delaying stand-in on 127.0.0.1:`agentPort + 1` in the developer's.
/// Each build gets its own agent: the link's protocol may differ between them.
struct ClusterLinkPath {
    let name: String
    let sysmirror: String
    let agentPort: Int
    var forwardPort: Int { agentPort + 1 }
    /// The stand-in that sets up no stream (`LinkRow.answersAtOnce`), beside the one on `forwardPort`.
    var answeringPort: Int { agentPort + 2 }
    var relay: String { "\(work)/cluster-\(agentPort).sock" }
}

/// The pod stand-in of this section and the programs it runs; made by `with`, which removes it all.
struct ClusterPod {
    let pod: String, developer: String
    /// The container's root folder: the pod's files as seen from outside.
    let root: String
    let container: Process
    let servers: Background
    let client: String, forwardScript: String
    var inPod: [String] { ["ip", "netns", "exec", pod] }
    var inDeveloper: [String] { ["ip", "netns", "exec", developer] }

    static func with(_ body: (ClusterPod) throws -> Void) throws {
        let client = "\(options.programs)/cluster-link.py"
        let forwardScript = URL(fileURLWithPath: options.programs).deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Tests/Fixtures/delaying-forward/delaying_forward.py")
            .path
        for script in [client, forwardScript] where !FileManager.default.fileExists(atPath: script) {
            throw BenchError(description: "no \(script)")
        }
        let pod = "sysmirror-bench-cpod-\(getpid())", developer = "sysmirror-bench-cdev-\(getpid())"
        try withNamespaces([pod, developer]) { servers in
            let inPod = ["ip", "netns", "exec", pod]
            for address in [ClusterAddress.dns, ClusterAddress.web, ClusterAddress.echo] {
                run(["ip", "-n", pod, "addr", "add", "\(address)/32", "dev", "lo"])
            }
            // No upstream; cluster.local answered here alone, so that a name not in it is NXDOMAIN (as from
            // CoreDNS) and glibc walks the whole search list, not REFUSED (after which it stops early).
            let nameServer = try SpawnedServer(
                inPod + [
                    "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--user=root",
                    "--listen-address=\(ClusterAddress.dns)", "--bind-interfaces", "--pid-file=",
                    "--local=/cluster.local/", "--address=/web.default.svc.cluster.local/\(ClusterAddress.web)",
                ])
            defer { nameServer.stop() }
            try buildHTTPBench()
            _ = try servers.start(inPod + ["\(work)/httpbench", "serve", "\(ClusterAddress.web):8080"])
            _ = try servers.start(
                inPod + [
                    "/usr/bin/python3", "-c",
                    """
                    import socket
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    s.bind(('\(ClusterAddress.echo)', 7))
                    while True:
                        data, peer = s.recvfrom(65536)
                        s.sendto(b'echo ' + data, peer)
                    """,
                ], log: "cluster-echo.log")
            let root = "\(work)/cluster-root"
            try makeContainerRoot(root)
            let container = try servers.start(
                inPod + [
                    "/usr/bin/env", "-i", "PATH=/bin", "/usr/bin/unshare", "--mount", "--root=\(root)", "/bin/busybox",
                    "sleep", "100000",
                ], log: "cluster-container.log")
            try waitUntil("the container in its root") {
                (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(container.processIdentifier)/root"))
                    == root
            }
            try waitUntil("the pod's servers") {
                let tcp = run(inPod + ["cat", "/proc/net/tcp"]).output,
                    udp = run(inPod + ["cat", "/proc/net/udp"]).output
                // 10.96.0.10:53 (TCP and UDP), 10.96.0.20:8080, 10.96.0.40:7 (UDP), in /proc/net's byte order.
                return tcp.contains("0A00600A:0035") && tcp.contains("1400600A:1F90") && udp.contains("0A00600A:0035")
                    && udp.contains("2800600A:0007")
            }
            try body(
                ClusterPod(
                    pod: pod, developer: developer, root: root, container: container, servers: servers, client: client,
                    forwardScript: forwardScript))
        }
    }

    /// The container's files: the pod's resolver settings as a kubelet writes them, a 2 KiB file, a folder of
    /// 20 files, and busybox (static) to run there.
    static func makeContainerRoot(_ root: String) throws {
        let files = [
            "etc/resolv.conf":
                "nameserver \(ClusterAddress.dns)\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
            "etc/hosts": "127.0.0.1 localhost\n", "etc/hostname": "web-7d9f8b-x2x4q\n",
            "data/small": String(repeating: "a", count: 2048),
        ].merging((1...20).map { (String(format: "data/dir/file-%02d", $0), "\($0)\n") }) { $1 }
        for (path, content) in files {
            let url = URL(fileURLWithPath: "\(root)/\(path)")
            try FileManager.default.createDirectory(
                at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try content.write(to: url, atomically: false, encoding: .utf8)
        }
        try FileManager.default.createDirectory(atPath: "\(root)/bin", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: "/bin/busybox", toPath: "\(root)/bin/busybox")
    }

    /// `path`'s agent on TCP in the pod's namespace, serving the container, and the socat hop to its unix socket.
    func startAgent(_ path: ClusterLinkPath) throws {
        _ = try servers.start(
            inPod + [
                path.sysmirror, "agent", "--listen", "127.0.0.1:\(path.agentPort)", "--pid",
                "\(container.processIdentifier)", "--token-file", "\(work)/token", "--quiet", "--idle-timeout", "3600",
            ], log: "cluster-agent-\(path.agentPort).log")
        _ = try servers.start(
            inPod + ["socat", "UNIX-LISTEN:\(path.relay),fork,backlog=1024", "TCP:127.0.0.1:\(path.agentPort),nodelay"])
        try waitUntil("\(path.name)'s agent on TCP and its hop") {
            FileManager.default.fileExists(atPath: path.relay) && listensOnLoopback(pod, port: path.agentPort)
        }
    }

    /// The delaying stand-in on `port` in front of `relay` (a unix socket), once it says it listens.
    func startForward(to relay: String, port: Int, delayMilliseconds: Int, setupRoundTrips: Int) throws -> Process {
        let said = "cluster-forward-\(port).out"
        let forward = try servers.start(
            inDeveloper + [
                "/usr/bin/python3", "-I", forwardScript, "--listen", "127.0.0.1:\(port)", "--connect",
                "unix:\(relay)", "--delay-ms", "\(delayMilliseconds)", "--stream-setup-rtts", "\(setupRoundTrips)",
            ], log: "cluster-forward-\(port).log", output: said)
        try waitUntil("the delaying port-forward stand-in") {
            ((try? String(contentsOfFile: "\(work)/\(said)", encoding: .utf8)) ?? "").contains("listening")
                || !forward.isRunning
        }
        guard forward.isRunning else { throw BenchError(description: "the delaying stand-in exited: see \(said)") }
        return forward
    }

    /// The link's own round trip, the table's unit: one byte to an echo and back through a stand-in with
    /// `delayMilliseconds` each way (its timers run late by up to a millisecond, so 20 ms measure about 21).
    func linkRoundTrip(delayMilliseconds: Int) throws -> Double {
        let echo = "\(work)/cluster-echo.sock", port = 7900
        let server = try servers.start(["socat", "UNIX-LISTEN:\(echo),fork,backlog=64", "EXEC:cat"])
        defer { servers.stop(server, signal: SIGTERM) }
        try waitUntil("the echo") { FileManager.default.fileExists(atPath: echo) }
        let forward = try startForward(
            to: echo, port: port, delayMilliseconds: delayMilliseconds, setupRoundTrips: 0)
        defer { servers.stop(forward, signal: SIGTERM) }
        let measured = combined([
            clientRun(inDeveloper + ["/usr/bin/python3", "-I", client, "/", "roundtrip", "21", "--port", "\(port)"])
        ])
        guard let median = measured.median else {
            throw BenchError(description: "the link's round trip: \(measured.failure ?? "?")")
        }
        return median
    }

    /// `row`'s tries inside the pod's namespace, as the container would make them: with the pod's resolver
    /// settings bound over this machine's (in a mount namespace of the command's own) and its files under `root`.
    func inThePod(_ row: LinkRow, tries: Int) -> LinkResult {
        let bind =
            #"mount --bind "$0/etc/resolv.conf" /etc/resolv.conf && mount --bind "$0/etc/hosts" /etc/hosts && exec "$@""#
        return clientRun(
            inPod + ["/usr/bin/unshare", "--mount", "--", "/bin/sh", "-c", bind, root]
                + clientCommand(row, tries, root: root))
    }

    /// `row`'s tries under `path`'s `sysmirror trace`, through its delaying stand-in.
    func underSysmirror(_ row: LinkRow, tries: Int, _ path: ClusterLinkPath) -> LinkResult {
        clientRun(inDeveloper + trace(path) + clientCommand(row, tries, root: "/"))
    }

    /// Start-up: `true` alone, or under `path`'s trace (through the stand-in on `port`), timed by the client in
    /// the developer's namespace.
    func startUp(tries: Int, _ path: ClusterLinkPath?, port: Int? = nil) -> LinkResult {
        let program = (path.map { trace($0, port: port ?? $0.forwardPort) } ?? []) + ["/bin/true"]
        return clientRun(
            inDeveloper + ["/usr/bin/python3", "-I", client, "/", LinkOperation.startUp.rawValue, "\(tries)", "--"]
                + program)
    }

    func trace(_ path: ClusterLinkPath, port: Int? = nil) -> [String] {
        [
            path.sysmirror, "trace", "--quiet", "--agent", "127.0.0.1:\(port ?? path.forwardPort)", "--token-file",
            "\(work)/token", "--",
        ]
    }

    func clientCommand(_ row: LinkRow, _ tries: Int, root: String) -> [String] {
        ["/usr/bin/python3", "-I", client, root, row.operation.rawValue, "\(tries)"]
            + (row.firstInProcess ? ["--first"] : [])
    }
}

/// Runs the client to its end (two minutes at most) and reads what it said. A failure becomes the row's,
/// so that one operation that hangs or crashes does not end the section before its cleanup.
func clientRun(_ command: [String], seconds: Double = 120) -> LinkResult {
    let output = "\(work)/cluster-client.out", errors = "\(work)/cluster-client.err"
    for file in [output, errors] { _ = FileManager.default.createFile(atPath: file, contents: nil) }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = command
    guard let standardOutput = FileHandle(forWritingAtPath: output),
        let standardError = FileHandle(forWritingAtPath: errors)
    else { return .failed("cannot open \(output)") }
    defer {
        try? standardOutput.close()
        try? standardError.close()
    }
    process.standardOutput = standardOutput
    process.standardError = standardError
    do { try process.run() } catch { return .failed("cannot run \(command[0]): \(error)") }
    let deadline = Date().addingTimeInterval(seconds)
    while process.isRunning && Date() < deadline { usleep(5_000) }
    if process.isRunning {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        return .failed("no end in \(Int(seconds)) s")
    }
    let said = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
    guard process.terminationStatus == 0 else {
        let why = ((try? String(contentsOfFile: errors, encoding: .utf8)) ?? "").split(separator: "\n").last ?? ""
        return .failed("exit \(process.terminationStatus): \(why)")
    }
    for line in said.split(separator: "\n") {
        if line.hasPrefix("fails: ") { return .failed(String(line.dropFirst("fails: ".count))) }
        if line.hasPrefix("ms ") { return .times(line.split(separator: " ").dropFirst().compactMap { Double($0) }) }
    }
    return .failed("said \(said.prefix(200))")
}

/// The whole section: the table at 10 ms each way (with kubectl's two stream round trips per new connection),
/// then with no delay.
func clusterLink() throws {
    guard getuid() == 0 else {
        print("Cluster link: skipped (network namespaces need root)\n")
        return
    }
    let started = Date()
    var paths = [ClusterLinkPath(name: "sysmirror", sysmirror: options.sysmirror, agentPort: 7000)]
    if let baseline = options.baselineSysmirror {
        paths.append(ClusterLinkPath(name: "baseline", sysmirror: baseline, agentPort: 7100))
    }
    let tries = max(7, options.rounds)
    try ClusterPod.with { stand in
        for path in paths { try stand.startAgent(path) }
        for (delay, setup) in [(10, 2), (0, 0)] {
            let forwards = try paths.flatMap {
                [
                    try stand.startForward(
                        to: $0.relay, port: $0.forwardPort, delayMilliseconds: delay, setupRoundTrips: setup),
                    try stand.startForward(
                        to: $0.relay, port: $0.answeringPort, delayMilliseconds: delay, setupRoundTrips: 0),
                ]
            }
            defer { for forward in forwards { stand.servers.stop(forward, signal: SIGTERM) } }
            var inPod: [String: [LinkResult]] = [:]
            var traced: [String: [[LinkResult]]] = [:]
            for row in LinkRow.all {
                // A fresh process per try where the first is what counts; otherwise one process's tries. The
                // cases take turns, so that a slow moment of the machine falls on all of them.
                for _ in 0..<(row.firstInProcess ? tries : 1) {
                    let count = row.firstInProcess ? 1 : tries
                    inPod[row.name, default: []].append(
                        row.operation == .startUp ? stand.startUp(tries: count, nil) : stand.inThePod(row, tries: count)
                    )
                    for (index, path) in paths.enumerated() {
                        let result =
                            row.operation == .startUp
                            ? stand.startUp(
                                tries: count, path, port: row.answersAtOnce ? path.answeringPort : path.forwardPort)
                            : stand.underSysmirror(row, tries: count, path)
                        traced[row.name, default: Array(repeating: [], count: paths.count)][index].append(result)
                    }
                }
            }
            printClusterTable(
                delay: delay, setup: setup,
                roundTrip: delay > 0 ? try stand.linkRoundTrip(delayMilliseconds: delay) : 0,
                tries: tries, paths: paths, inPod: inPod, traced: traced)
        }
    }
    print("section: \(format(Date().timeIntervalSince(started))) s with setup")
    print("")
}

/// The median of every try of `results`, or the first failure among them.
func combined(_ results: [LinkResult]) -> (median: Double?, failure: String?) {
    var times: [Double] = []
    for result in results {
        switch result {
        case .times(let some): times += some
        case .failed(let why): return (nil, why)
        }
    }
    return (median(times), nil)
}

/// `roundTrip`: the link's own, as measured (`linkRoundTrip`), in which the RTT columns count.
func printClusterTable(
    delay: Int, setup: Int, roundTrip: Double, tries: Int, paths: [ClusterLinkPath], inPod: [String: [LinkResult]],
    traced: [String: [[LinkResult]]]
) {
    let inRoundTrips = delay > 0
    if inRoundTrips {
        print(
            "Cluster link, \(delay) ms each way (an RTT measures \(format(roundTrip, 1)) ms: one byte to an echo and back through the stand-in), a new port-forward connection waits \(setup) RTT (median of \(tries) tries, ms)"
        )
    } else {
        print("Cluster link, no delay, no set-up wait (median of \(tries) tries, ms)")
    }
    var header = pad("operation", 44) + pad("in the pod", 12)
    for path in paths {
        header += pad(path.name, 26) + pad("added", 8) + (inRoundTrips ? pad("RTT", 7) : "")
    }
    if inRoundTrips { header += pad("target RTT", 12) + "meets" }
    print(header)
    /// Failures whose reason does not fit their column, said in full under the table.
    var untold: [String] = []
    func failure(_ why: String?, _ who: String, _ row: LinkRow, width: Int) -> String {
        let said = "fails: \(why ?? "")"
        guard said.count >= width else { return said }
        untold.append("\(row.name), \(who): \(said)")
        return "fails (see below)".count < width ? "fails (see below)" : "fails"
    }
    for row in LinkRow.all {
        let pod = combined(inPod[row.name] ?? [])
        var line = pad(row.name, 44)
        line += pad(pod.median.map { format($0, 1) } ?? failure(pod.failure, "in the pod", row, width: 12), 12)
        var meets = ""
        for index in paths.indices {
            let mine = combined(traced[row.name]?[index] ?? [])
            guard let median = mine.median else {
                line += pad(failure(mine.failure, paths[index].name, row, width: 26), 26) + pad("", 8)
                line += inRoundTrips ? pad("", 7) : ""
                if index == 0 { meets = "no" }
                continue
            }
            line += pad(format(median, 1), 26)
            guard let podMedian = pod.median else {
                line += pad("", 8) + (inRoundTrips ? pad("", 7) : "")
                continue
            }
            let added = median - podMedian
            line += pad(format(added, 1), 8)
            if inRoundTrips {
                // Start-up's target is its whole time; every other row's is what it adds.
                let measured = (row.targetIsTotal ? median : added) / roundTrip
                line += pad(format(measured, 2), 7)
                if index == 0, let target = row.target { meets = measured <= target ? "yes" : "no" }
            }
        }
        if inRoundTrips {
            let target = row.target.map { row.targetIsTotal ? "≤ \(format($0, 1)) all" : "≤ +\(format($0, 1))" }
            line += pad(target ?? "—", 12) + meets
        }
        print(line)
    }
    for said in untold { print(said) }
    print("in the pod: the same Python client in the pod's namespace, with the pod's resolv.conf and hosts bound over")
    print("this machine's and its files under the container's root; under sysmirror: `trace --quiet --agent` in the")
    print("developer's namespace through the delaying stand-in (Tests/Fixtures/delaying-forward), the agent on TCP")
    print(
        "behind a socat hop (tcp → unix). Start-up: `true` spawned alone and under trace; its RTT column is the whole")
    print("start-up, every other row's what sysmirror adds. \"The port-forward answering\": through a second stand-in")
    print("that sets up no stream, as the connection that found a --target agent answering, now the session's link;")
    print("\"a new port-forward connection\" waits the set-up round trips first, as any `--agent` session's first.")
    print("Each try after an untimed first one in the same process, except \"first in process\" and the GET by name:")
    print("one fresh process per try. The stand-in's timers run up to 1 ms late, so the RTT columns count in the")
    print("round trip the stand-in really gives, measured in the same run (the header's).")
    print("")
}
