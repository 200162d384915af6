// sysmirror-bench: compares sysmirror with the speed anchors and other tools in one run, on this machine.
//
// Per-call costs come from ../shared/anchors/syscall-loop.c (openat+close of a file: routed; getppid: never
// routed), run natively, under unotify-min (the minimal C supervisor), sysmirror trace (log to a file),
// strace -f (log to a file) and proot. Cases run interleaved, round after round, and the median is shown.
import Foundation
import SyscallDecoding

struct Options {
    var sysmirror = ""
    var anchors = ""
    var programs = ""
    var rounds = 5
    var iterations = 100_000
    var busy = false
    /// Only this section: outgoing, incoming, sharing, resources or cluster (they need root), or loops.
    var only: String?
    /// `--only cluster`: another sysmirror build, measured beside the first (before and after, in one run).
    var baselineSysmirror: String?

    static func parse(_ arguments: [String]) -> Options {
        var options = Options()
        var rest = arguments.dropFirst()
        while let argument = rest.popFirst() {
            switch argument {
            case "--sysmirror": options.sysmirror = rest.popFirst() ?? ""
            case "--anchors": options.anchors = rest.popFirst() ?? ""
            case "--programs": options.programs = rest.popFirst() ?? ""
            case "--quick": (options.rounds, options.iterations) = (3, 30_000)
            case "--busy": options.busy = true
            case "--only": options.only = rest.popFirst()
            case "--baseline-sysmirror": options.baselineSysmirror = rest.popFirst()
            default:
                print(
                    "usage: sysmirror-bench --sysmirror BIN --anchors DIR --programs DIR [--quick] [--busy] [--only outgoing|incoming|sharing|resources|loops|cluster|files] [--baseline-sysmirror BIN]"
                )
                print("  --quick  fewer rounds and iterations")
                print("  --busy   keep the other CPU busy with a spinning process during the run")
                print("  --only   run one section of network traffic alone")
                print("           (sharing: two sessions stealing one port by filter beside one alone;")
                print("           resources: sysmirror's threads and memory over a long session;")
                print("           loops: the serving loop's relay, own epoll against SwiftNIO;")
                print("           cluster: round trips per operation through a delaying port-forward stand-in)")
                print("  --baseline-sysmirror  with --only cluster: another build beside BIN, in one run")
                exit(argument == "--help" ? 0 : 2)
            }
        }
        return options
    }
}

/// Runs a command to the end; returns its standard output and the wall time in seconds.
@discardableResult
func run(_ command: [String], quietStderr: Bool = true) -> (output: String, seconds: Double) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = command
    let output = Pipe()
    process.standardOutput = output
    // Kept aside, to say why should the command fail.
    let errors = NSTemporaryDirectory() + "sysmirror-bench-stderr-\(getpid())"
    _ = FileManager.default.createFile(atPath: errors, contents: nil)
    defer { try? FileManager.default.removeItem(atPath: errors) }
    if quietStderr { process.standardError = FileHandle(forWritingAtPath: errors) }
    let start = DispatchTime.now()
    do { try process.run() } catch { fatalError("cannot run \(command): \(error)") }
    let data = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
    guard process.terminationStatus == 0 else {
        let said = (try? String(contentsOfFile: errors, encoding: .utf8))?.suffix(2000) ?? ""
        fatalError("\(command.joined(separator: " ")) exited \(process.terminationStatus): \(said)")
    }
    return (String(decoding: data, as: UTF8.self), seconds)
}

/// Wall time of a command, with posix_spawn and waitpid: Foundation's Process polls for the exit, which is too
/// coarse for a workload of tens of milliseconds. Output goes to /dev/null.
func timed(_ command: [String]) -> Double {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    let arguments = command.map { strdup($0) } + [nil]
    defer { arguments.forEach { free($0) } }
    var pid: pid_t = 0
    let start = DispatchTime.now().uptimeNanoseconds
    guard posix_spawnp(&pid, command[0], &actions, nil, arguments, environ) == 0 else {
        fatalError("cannot run \(command)")
    }
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    guard status == 0 else { fatalError("\(command.joined(separator: " ")) failed with status \(status)") }
    return seconds
}

func value(_ key: String, in output: String) -> Double {
    for line in output.split(separator: "\n") where line.hasPrefix(key + " ") {
        return Double(line.dropFirst(key.count + 1)) ?? .nan
    }
    return .nan
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted.isEmpty ? .nan : sorted[sorted.count / 2]
}

func format(_ value: Double, _ digits: Int = 1) -> String {
    String(format: "%.\(digits)f", value)
}

/// `text` left-aligned in `width` columns, and at least one space after it.
func pad(_ text: String, _ width: Int) -> String {
    text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
}

let options = Options.parse(CommandLine.arguments)
let work = FileManager.default.temporaryDirectory.appendingPathComponent("sysmirror-bench-\(getpid())").path
try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
defer { try? FileManager.default.removeItem(atPath: work) }

try "bench-token".write(toFile: "\(work)/token", atomically: false, encoding: .utf8)

var spinner: Process?
if options.busy {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/sh")
    process.arguments = ["-c", "while :; do :; done"]
    try process.run()
    spinner = process
}
defer { spinner?.terminate() }

struct Case {
    let name: String
    let prefix: [String]
    /// Slow tools run fewer iterations; the result is per call either way.
    let scale: Int
}

let log = "\(work)/trace.log"
let cases = [
    Case(name: "native", prefix: [], scale: 1),
    Case(name: "unotify-min (anchor)", prefix: ["\(work)/unotify-min"], scale: 1),
    Case(name: "sysmirror trace --log FILE", prefix: [options.sysmirror, "trace", "--log", log, "--"], scale: 1),
    Case(name: "sysmirror trace --quiet", prefix: [options.sysmirror, "trace", "--quiet", "--"], scale: 1),
    Case(name: "strace -f -o FILE", prefix: ["strace", "-f", "-o", "\(work)/strace.log"], scale: 10),
    Case(name: "proot", prefix: ["proot"], scale: 5),
]

print(
    "sysmirror-bench: \(options.rounds) rounds, \(options.iterations) iterations per loop, CPUs \(ProcessInfo.processInfo.activeProcessorCount), other CPU \(options.busy ? "busy (spinning process)" : "idle")"
)
print("")

if let only = options.only {
    switch only {
    case "outgoing": try outgoingTraffic()
    case "incoming": try incomingTraffic()
    case "sharing": try sharedSteal()
    case "resources": try resourcesOfLongSessions()
    case "loops": try servingLoops()
    case "cluster": try clusterLink()
    case "files": try remoteFiles()
    default: print("--only takes outgoing, incoming, sharing, resources, loops, cluster or files, not \(only)")
    }
    try? FileManager.default.removeItem(atPath: work)
    spinner?.terminate()  // exit runs no defer
    exit(0)
}

// The anchors and the bench's own programs, built here so every case runs the same binaries (the network
// sections alone need none of them).
run(["cc", "-O2", "-pthread", "-o", "\(work)/unotify-min", "\(options.anchors)/unotify-min.c"])
run(["cc", "-O2", "-static", "-o", "\(work)/syscall-loop", "\(options.anchors)/syscall-loop.c"])
run(["cc", "-O2", "-static", "-o", "\(work)/sendmsg-loop", "\(options.programs)/sendmsg-loop.c"])
_ = FileManager.default.createFile(atPath: "\(work)/file", contents: Data("x".utf8))

// Per-call costs.
var openat: [String: [Double]] = [:]
var getppid: [String: [Double]] = [:]
var workload: [String: [Double]] = [:]
// A small build: five compiles, one after the other, from a shell.
let build = [
    "/bin/sh", "-c",
    "for i in 1 2 3 4 5; do gcc -O2 -c \(options.anchors)/syscall-loop.c -o \(work)/loop$i.o || exit 1; done",
]
for _ in 0..<options.rounds {
    for item in cases {
        let output = run(
            item.prefix + ["\(work)/syscall-loop", String(options.iterations / item.scale), "\(work)/file"]
        ).output
        openat[item.name, default: []].append(value("openat_ns", in: output))
        getppid[item.name, default: []].append(value("getppid_ns", in: output))
        workload[item.name, default: []].append(timed(item.prefix + build))
    }
}

let anchor = "unotify-min (anchor)"
let anchorOpen = median(openat[anchor]!)
let anchorPid = median(getppid[anchor]!)
let anchorWork = median(workload[anchor]!)
print("Per call (median of \(options.rounds)); ratios to unotify-min measured in this run")
print(
    pad("case", 28) + pad("openat+close µs", 17) + pad("× anchor", 10) + pad("getppid ns", 12) + pad("× anchor", 10)
        + pad("build ms", 11) + "× anchor")
for item in cases {
    let o = median(openat[item.name]!)
    let g = median(getppid[item.name]!)
    let w = median(workload[item.name]!)
    print(
        pad(item.name, 28) + pad(format(o / 1000, 2), 17) + pad(format(o / anchorOpen, 2), 10)
            + pad(format(g, 1), 12) + pad(format(g / anchorPid, 2), 10) + pad(format(w * 1000, 1), 11)
            + format(w / anchorWork, 2))
}
print("targets: sysmirror routed ≤ 1.30× the anchor, unrouted ≤ 1.05×")
print("build: five `gcc -O2 -c` of syscall-loop.c from sh; sysmirror routes more calls (readlink, access,")
print("execve) than unotify-min, which routes only openat, open, the stat family, connect and sendto")
print("")

// What routing sendmsg costs a program that sends with it on a connected socket.
var sendmsg: [String: [Double]] = [:]
let sendmsgCases = [
    ("native", [String]()),
    ("sysmirror trace (sendmsg routed)", [options.sysmirror, "trace", "--log", log, "--"]),
    ("sysmirror trace --no-trace-sendmsg", [options.sysmirror, "trace", "--log", log, "--no-trace-sendmsg", "--"]),
]
for _ in 0..<options.rounds {
    for (name, prefix) in sendmsgCases {
        sendmsg[name, default: []].append(
            value("sendmsg_ns", in: run(prefix + ["\(work)/sendmsg-loop", String(options.iterations)]).output))
    }
}
print("sendmsg + recv on connected UDP over loopback (median µs per pair)")
for (name, _) in sendmsgCases {
    print(pad(name, 38) + format(median(sendmsg[name]!) / 1000, 2))
}
print("")

try remoteFiles()
print("")

if getuid() == 0 {
    try outgoingTraffic()
    try incomingTraffic()
    try sharedSteal()
    try resourcesOfLongSessions()
} else {
    print("Outgoing and incoming traffic, resources of a long session: skipped (network namespaces need root)\n")
}

// The log writer's cost per event, off the program's path.
let spec = SyscallTable.x86_64[.openat]!
let call = DecodedSyscall(
    spec: spec,
    values: [
        .integer(UInt64(bitPattern: -100)), .string(Array("/usr/lib/x86_64-linux-gnu/libc.so.6".utf8)),
        .integer(0o2000000), .integer(0),
    ])
let event = TraceEvent(
    time: 1_795_742_747_123_456_789, pid: 4242, syscall: "openat", arguments: call, route: .local, outcome: .continued,
    durationNanos: 1234)
print("Event hand-off on the receiving thread (ns per event)")
do {
    var records: [UInt8] = []
    records.reserveCapacity(1 << 20)
    let count = 200_000
    let start = DispatchTime.now().uptimeNanoseconds
    for index in 0..<count {
        if index % 4096 == 0 { records.removeAll(keepingCapacity: true) }
        TraceRecord.append(event, to: &records)
    }
    let nanoseconds = Double(DispatchTime.now().uptimeNanoseconds - start) / Double(count)
    print(pad("TraceRecord.append", 38) + String(Int(nanoseconds)))
}
print("")
print("Event hand-off on the writer thread (ns per event)")
do {
    var records: [UInt8] = []
    for _ in 0..<4096 { TraceRecord.append(event, to: &records) }
    let rounds = 50
    let start = DispatchTime.now().uptimeNanoseconds
    var decoded = 0
    for _ in 0..<rounds { decoded += TraceRecord.decode(records, table: .x86_64).count }
    let nanoseconds = Double(DispatchTime.now().uptimeNanoseconds - start) / Double(decoded)
    print(pad("TraceRecord.decode", 38) + String(Int(nanoseconds)))
}
print("")
print("Log formatting on the writer thread (ns per event)")
for format in TraceFormat.allCases {
    var buffer = LineBuffer(capacity: 1 << 20)
    let count = 200_000
    let start = DispatchTime.now().uptimeNanoseconds
    for index in 0..<count {
        if index % 4096 == 0 { buffer.removeAll() }
        format.append(event, to: &buffer)
    }
    let nanoseconds = Double(DispatchTime.now().uptimeNanoseconds - start) / Double(count)
    print(pad(format.rawValue, 38) + String(Int(nanoseconds)))
}

/// Long-running processes of one section, ended together (SIGKILL) at its end.
final class Background {
    private var started: [Process] = []

    /// Starts a server; its standard error goes to `log` (in the work folder, kept when a case fails) or
    /// nowhere, its standard output to `output` (in the work folder) or nowhere.
    func start(_ command: [String], log: String? = nil, output: String? = nil) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = command
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        if let log {
            _ = FileManager.default.createFile(atPath: "\(work)/\(log)", contents: nil)
            process.standardError = FileHandle(forWritingAtPath: "\(work)/\(log)")
        }
        if let output {
            _ = FileManager.default.createFile(atPath: "\(work)/\(output)", contents: nil)
            process.standardOutput = FileHandle(forWritingAtPath: "\(work)/\(output)")
        }
        try process.run()
        started.append(process)
        return process
    }

    /// Ends one process with `signal` and waits for it, `seconds` at most; then with SIGKILL.
    func stop(_ process: Process, signal: Int32, seconds: Double = 10) {
        if process.isRunning { kill(process.processIdentifier, signal) }
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        started.removeAll { $0 === process }
    }

    func stopAll() {
        for process in started { stop(process, signal: SIGKILL) }
    }
}

/// Why a section stopped early (it ended its processes and removed its namespaces first).
struct BenchError: Error, CustomStringConvertible {
    let description: String
}

/// Waits, up to `seconds`, until `condition` holds; otherwise throws, naming `what` it waited for.
func waitUntil(_ what: String, seconds: Double = 10, _ condition: () -> Bool) throws {
    let deadline = Date().addingTimeInterval(seconds)
    while !condition() {
        guard Date() < deadline else { throw BenchError(description: "no \(what) within \(Int(seconds)) s") }
        usleep(20_000)
    }
}

/// Runs one section in network namespaces `names` (made by makeNamespaces) with its long-running processes;
/// whatever happens, the processes end and the namespaces go afterwards.
func withNamespaces<Result>(_ names: [String], _ body: (Background) throws -> Result) throws -> Result {
    let servers = Background()
    defer {
        servers.stopAll()
        for namespace in names { run(["ip", "netns", "delete", namespace]) }
    }
    makeNamespaces(names)
    return try body(servers)
}

/// Network namespaces with loopback up; tens of thousands of short connections per run, so TIME_WAIT must
/// not use up the local ports.
func makeNamespaces(_ names: [String]) {
    for namespace in names {
        run(["ip", "netns", "add", namespace])
        run(["ip", "-n", namespace, "link", "set", "lo", "up"])
        run(["ip", "netns", "exec", namespace, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"])
    }
}

/// Whether something in `namespace` listens on TCP 127.0.0.1:`port`.
func listensOnLoopback(_ namespace: String, port: Int) -> Bool {
    let table = run(["ip", "netns", "exec", namespace, "cat", "/proc/net/tcp"]).output
    return table.contains(String(format: "0100007F:%04X 00000000:0000 0A", port))
}

/// A sleeping process in `namespace`: the pod's container, as an agent's `--pid` names it.
func startTarget(in namespace: String, servers: Background) throws -> Process {
    try servers.start(["ip", "netns", "exec", namespace, "sleep", "100000"])
}

/// An agent in `namespace` serving a sleeping process there, on the unix socket `socket` (in the work
/// folder), once it listens; returns the process it serves.
@discardableResult
func startAgent(in namespace: String, socket: String, servers: Background) throws -> Process {
    let inNamespace = ["ip", "netns", "exec", namespace]
    let target = try startTarget(in: namespace, servers: servers)
    _ = try servers.start(
        inNamespace + [
            options.sysmirror, "agent", "--listen", "unix:\(work)/\(socket)", "--pid", "\(target.processIdentifier)",
            "--token-file", "\(work)/token", "--quiet", "--idle-timeout", "3600",
        ], log: "\(socket).log")
    try waitUntil("agent listening on \(socket)") { FileManager.default.fileExists(atPath: "\(work)/\(socket)") }
    return target
}

/// An agent reached as through `kubectl port-forward` (two socat hops stand in for it): no socket can be
/// passed, so each connection is relayed by the agent (StreamRelay). The agent listens on 127.0.0.1:7000 in
/// `pod`, serving `target`; the hops, tcp → unix → tcp, take it to 127.0.0.1:7001 in `developer`. Every socat
/// listens with a backlog of 1024: its default, 5, overflowed under 2,000 back-to-back connects, and SYN
/// retransmits stalled a run. `name` keeps the relay's socket and the agent's log apart from another
/// section's. Returns the address for `--agent`, once every hop listens.
func startPortForwardStandIn(pod: String, developer: String, target: Process, name: String, servers: Background)
    throws -> String
{
    let relay = "\(work)/\(name).sock"
    _ = try servers.start(
        ["ip", "netns", "exec", pod] + [
            options.sysmirror, "agent", "--listen", "127.0.0.1:7000", "--pid", "\(target.processIdentifier)",
            "--token-file", "\(work)/token", "--quiet", "--idle-timeout", "3600",
        ], log: "\(name)-agent.log")
    _ = try servers.start(
        ["ip", "netns", "exec", pod, "socat", "UNIX-LISTEN:\(relay),fork,backlog=1024", "TCP:127.0.0.1:7000,nodelay"])
    _ = try servers.start(
        ["ip", "netns", "exec", developer] + [
            "socat", "TCP-LISTEN:7001,bind=127.0.0.1,fork,backlog=1024,reuseaddr,nodelay", "UNIX-CONNECT:\(relay)",
        ])
    try waitUntil("port-forward stand-in listening") {
        FileManager.default.fileExists(atPath: relay) && listensOnLoopback(pod, port: 7000)
            && listensOnLoopback(developer, port: 7001)
    }
    return "127.0.0.1:7001"
}

/// The children of `pid`, from /proc.
func childProcesses(of pid: Int32) -> [Int32] {
    let text = (try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)) ?? ""
    return text.split(separator: " ").compactMap { Int32($0) }
}

/// The Go HTTP server and load generator (bench/programs/httpbench), built once into the work folder.
func buildHTTPBench() throws {
    guard !FileManager.default.fileExists(atPath: "\(work)/httpbench") else { return }
    let build = Process()
    build.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    build.arguments = ["go", "build", "-o", "\(work)/httpbench", "main.go"]
    build.currentDirectoryURL = URL(fileURLWithPath: "\(options.programs)/httpbench")
    build.environment = ProcessInfo.processInfo.environment.merging(
        ["CGO_ENABLED": "0", "GOCACHE": "\(work)/.gocache"]) { $1 }
    try build.run()
    build.waitUntilExit()
}

/// Outgoing traffic from a pod stand-in: a network namespace for the pod (its servers on 10.96.0.50, only
/// there) and one for the developer (loopback only), sysmirror's agent in the pod's. Compared in one run:
/// the same client run directly inside the pod's namespace, through sysmirror from the developer's, and (for
/// throughput) through a relay of two socat hops, tcp → unix → tcp.
func outgoingTraffic() throws {
    let pod = "sysmirror-bench-pod-\(getpid())", developer = "sysmirror-bench-dev-\(getpid())"
    try withNamespaces([pod, developer]) { servers in
        try outgoingTraffic(pod: pod, developer: developer, servers: servers)
    }
}

func outgoingTraffic(pod: String, developer: String, servers: Background) throws {
    let address = "10.96.0.50"
    run(["ip", "-n", pod, "addr", "add", "\(address)/32", "dev", "lo"])
    run(["cc", "-O2", "-static", "-o", "\(work)/connect-latency", "\(options.programs)/connect-latency.c"])
    try buildHTTPBench()
    let inPod = ["ip", "netns", "exec", pod], inDeveloper = ["ip", "netns", "exec", developer]
    let target = try startAgent(in: pod, socket: "net.sock", servers: servers)
    _ = try servers.start(inPod + ["iperf3", "-s", "-B", address, "-p", "5201"])
    _ = try servers.start(inPod + ["\(work)/httpbench", "serve", "\(address):9090"])
    _ = try servers.start(
        inPod + ["socat", "UNIX-LISTEN:\(work)/relay.sock,fork,backlog=1024", "TCP:\(address):5201"])
    _ = try servers.start(
        inDeveloper + [
            "socat", "TCP-LISTEN:5202,bind=127.0.0.1,fork,backlog=1024,reuseaddr", "UNIX-CONNECT:\(work)/relay.sock",
        ])
    _ = try servers.start(
        inPod + ["socat", "UNIX-LISTEN:\(work)/relay-http.sock,fork,backlog=1024", "TCP:\(address):9090,nodelay"])
    _ = try servers.start(
        inDeveloper + [
            "socat", "TCP-LISTEN:5203,bind=127.0.0.1,fork,backlog=1024,reuseaddr,nodelay",
            "UNIX-CONNECT:\(work)/relay-http.sock",
        ])
    let forward = try startPortForwardStandIn(
        pod: pod, developer: developer, target: target, name: "forward", servers: servers)
    try waitUntil("socket channel of the agent on net.sock") {
        FileManager.default.fileExists(atPath: "\(work)/net.sock.sockets")
    }
    usleep(300_000)  // the servers' listen
    let traced =
        inDeveloper + [
            options.sysmirror, "trace", "--quiet", "--agent", "unix:\(work)/net.sock", "--token-file", "\(work)/token",
            "--",
        ]
    let forwarded =
        inDeveloper + [
            options.sysmirror, "trace", "--quiet", "--agent", forward, "--token-file", "\(work)/token", "--",
        ]
    let seconds = options.rounds >= 5 ? 2 : 1

    func gigabits(_ command: [String]) -> Double {
        let output = run(command + ["-t", String(seconds), "-J"]).output
        guard let json = try? JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any],
            let end = json["end"] as? [String: Any], let sum = end["sum_received"] as? [String: Any],
            let bits = sum["bits_per_second"] as? Double
        else { return .nan }
        return bits / 1e9
    }
    var throughput: [String: [Double]] = [:]
    var connectP50: [String: [Double]] = [:]
    var connectP99: [String: [Double]] = [:]
    var requests: [String: [Double]] = [:]
    let throughputCases = [
        ("direct, inside the pod's namespace", inPod + ["iperf3", "-c", address, "-p", "5201"]),
        ("sysmirror trace --agent (unix)", traced + ["iperf3", "-c", address, "-p", "5201"]),
        ("two socat hops, tcp → unix → tcp", inDeveloper + ["iperf3", "-c", "127.0.0.1", "-p", "5202"]),
        ("trace via port-forward stand-in", forwarded + ["iperf3", "-c", address, "-p", "5201"]),
    ]
    /// (name, command prefix, the HTTP server as it reaches it)
    let clientCases = [
        ("direct, inside the pod's namespace", inPod, "\(address):9090"),
        ("sysmirror trace --agent (unix)", traced, "\(address):9090"),
        ("two socat hops, tcp → unix → tcp", inDeveloper, "127.0.0.1:5203"),
        ("trace via port-forward stand-in", forwarded, "\(address):9090"),
    ]
    for _ in 0..<options.rounds {
        for (name, command) in throughputCases { throughput[name, default: []].append(gigabits(command)) }
        for (name, prefix, server) in clientCases {
            let (host, port) = (String(server.split(separator: ":")[0]), String(server.split(separator: ":")[1]))
            let latency = run(prefix + ["\(work)/connect-latency", "2000", host, port]).output
            connectP50[name, default: []].append(value("p50_ns", in: latency))
            connectP99[name, default: []].append(value("p99_ns", in: latency))
            for mode in ["keepalive", "close"] {
                let load = run(
                    prefix + ["\(work)/httpbench", "load", "http://\(server)/", String(seconds), "4", mode]
                ).output
                requests["\(name) \(mode)", default: []].append(value("requests_per_s", in: load))
            }
        }
    }
    let direct = "direct, inside the pod's namespace", traced_ = "sysmirror trace --agent (unix)"
    print(
        "Outgoing TCP (median of \(options.rounds)): iperf3 for \(seconds) s; 2,000 blocking connects; an HTTP client (Go, 4"
    )
    print("connections) against a Go server in the pod, keep-alive and a new connection per request")
    print(
        pad("case", 40) + pad("Gbit/s", 9) + pad("× direct", 10) + pad("connect p50 µs", 16) + pad("p99 µs", 9)
            + pad("req/s keep-alive", 18) + pad("×", 7) + pad("req/s new conn", 16) + "×")
    let directRate = median(throughput[direct]!)
    for (name, _) in throughputCases {
        let rate = median(throughput[name]!)
        var line = pad(name, 40) + pad(format(rate, 2), 9) + pad(format(rate / directRate, 2), 10)
        if let p50 = connectP50[name] {
            let keep = median(requests["\(name) keepalive"]!), fresh = median(requests["\(name) close"]!)
            line += pad(format(median(p50) / 1000), 16) + pad(format(median(connectP99[name]!) / 1000), 9)
            line += pad(format(keep, 0), 18) + pad(format(keep / median(requests["\(direct) keepalive"]!), 2), 7)
            line += pad(format(fresh, 0), 16) + format(fresh / median(requests["\(direct) close"]!), 2)
        }
        print(line)
    }
    let added = median(connectP50[traced_]!) - median(connectP50[direct]!)
    print("connect latency added by sysmirror, p50: \(format(added / 1000)) µs")
    print("via port-forward stand-in: the agent relays each connection (docs/kubernetes.md); the stand-in is the")
    print("two socat hops above, so its row against theirs is the relay's own cost, a real port-forward's aside")
    print("targets: throughput ≥ 0.40× direct; added connect latency p50 ≤ 200 µs; keep-alive requests ≥ 0.80× direct")
    print("")
}

/// The incoming stand-in: the pod's namespace (the agent, on a unix socket, and the pod's application, a Go
/// HTTP server on :9090), a client namespace joined to it by a veth pair, and the developer's namespace, where
/// `session` runs the same server under `sysmirror trace`.
struct IncomingPod {
    static let address = "10.251.0.1"
    let pod: String, client: String, developer: String
    /// The agent's unix socket, in the work folder.
    let socket: String
    let servers: Background
    var inPod: [String] { ["ip", "netns", "exec", pod] }
    var inClient: [String] { ["ip", "netns", "exec", client] }

    /// Makes the stand-in (namespaces named with `tag`, which keeps them apart from another section's), runs
    /// `body` with it, and removes it.
    static func with<Result>(tag: String, _ body: (IncomingPod) throws -> Result) throws -> Result {
        let pod = "sysmirror-bench-\(tag)pod-\(getpid())", client = "sysmirror-bench-\(tag)cli-\(getpid())"
        let developer = "sysmirror-bench-\(tag)dev-\(getpid())"
        return try withNamespaces([pod, client, developer]) { servers in
            run(["ip", "-n", pod, "link", "add", "vpod", "type", "veth", "peer", "name", "vcli", "netns", client])
            for (namespace, device, address) in [(pod, "vpod", Self.address), (client, "vcli", "10.251.0.2")] {
                run(["ip", "-n", namespace, "addr", "add", "\(address)/24", "dev", device])
                run(["ip", "-n", namespace, "link", "set", device, "up"])
            }
            try buildHTTPBench()
            let stand = IncomingPod(
                pod: pod, client: client, developer: developer, socket: "\(tag)in.sock", servers: servers)
            try startAgent(in: pod, socket: stand.socket, servers: servers)
            _ = try servers.start(stand.inPod + ["\(work)/httpbench", "serve", "0.0.0.0:9090"])
            usleep(300_000)
            return try body(stand)
        }
    }

    /// How many sessions' nft tables the pod has (one per session taking its ports).
    var tables: Int { run(inPod + ["nft", "list", "tables"]).output.components(separatedBy: "sysmirror_").count - 1 }

    /// The local server (`httpbench serve 127.0.0.1:9090`, or `listen`; answering `answer`, by default
    /// "pod") under `sysmirror trace --incoming mode` with `extra` options (a filter, a port map), through
    /// the agent on `agent` (by default the stand-in's), once the pod's port is its; `idle`: sysmirror and the
    /// server at SCHED_IDLE, so that they use only CPU time the pod's side leaves (as on a laptop of their
    /// own). Without `log` (a file), the trace is `--quiet`. `others`: how many sessions (one nft table
    /// each) are taking the pod's ports already. The process is sysmirror's own (`chrt`, `ip netns exec` and
    /// `env` each exec the next).
    func session(
        _ mode: String, idle: Bool = false, log: String? = nil, listen: String = "127.0.0.1:9090",
        answer: String? = nil, extra: [String] = [], agent: String? = nil, others: Int = 0
    ) throws -> Process {
        let agent = agent ?? socket
        // The last session's table goes as it ends; waited for (a while), so that its table is not taken
        // for the new session's. (5 s at most.)
        for _ in 0..<250 {
            guard tables > others else { break }
            usleep(20_000)
        }
        let process = try servers.start(
            (idle ? ["chrt", "--idle", "0"] : []) + [
                "ip", "netns", "exec", developer, options.sysmirror, "trace",
            ] + (log.map { ["--log", $0] } ?? ["--quiet"]) + [
                "--agent", "unix:\(work)/\(agent)", "--token-file", "\(work)/token", "--incoming", mode,
            ] + extra + ["--", "\(work)/httpbench", "serve", listen] + (answer.map { [$0] } ?? []),
            log: "\(agent)-incoming-\(mode).log")
        try waitUntil("nft table of the \(mode) session", seconds: 30) { tables > others || !process.isRunning }
        guard process.isRunning else {
            throw BenchError(
                description: "sysmirror trace --incoming \(mode) exited: see \(agent)-incoming-\(mode).log")
        }
        return process
    }

    /// `count` requests to the pod's port 9090 from the client's namespace, one at a time, on one kept-alive
    /// connection (`mode` keepalive) or a new one each (close): the p50 and p99 round trip in µs.
    func latency(_ count: Int, _ mode: String) -> (p50: Double, p99: Double) {
        let measured = rotate(["http://\(Self.address):9090/"], count, mode)[0]
        return (measured.p50, measured.p99)
    }

    /// `count` requests of each of `targets` (URL, or URL|Name: value) from the client's namespace, their
    /// requests taking turns (`httpbench rotate`): each one's p50 and p99 round trip in µs, and who answered
    /// it (the answers' distinct bodies: "pod", "alice,pod").
    func rotate(_ targets: [String], _ count: Int, _ mode: String) -> [(p50: Double, p99: Double, answers: String)] {
        let output = run(inClient + ["\(work)/httpbench", "rotate", String(count), mode] + targets).output
        let lines = output.split(separator: "\n").filter { $0.hasPrefix("target ") }
        return targets.indices.map { index in
            guard index < lines.count else { return (.nan, .nan, "") }
            let words = lines[index].split(separator: " ").map(String.init)
            return (Double(words[3]) ?? .nan, Double(words[5]) ?? .nan, words.count > 7 ? words[7] : "")
        }
    }
}

/// Incoming traffic on a pod stand-in (IncomingPod). Compared in one run: requests the pod's application
/// answers, requests stolen by the local server, and the pod application's rate while a local server gets a
/// copy.
func incomingTraffic() throws {
    try IncomingPod.with(tag: "i") { stand in try incomingTraffic(on: stand) }
}

func incomingTraffic(on stand: IncomingPod) throws {
    let inClient = stand.inClient, servers = stand.servers
    let url = "http://\(IncomingPod.address):9090/"
    let seconds = options.rounds >= 5 ? 2 : 1
    let count = options.rounds >= 5 ? 2000 : 500
    var p50: [String: [Double]] = [:], p99: [String: [Double]] = [:], rate: [String: [Double]] = [:]
    func latency(_ name: String) {
        for mode in ["keepalive", "close"] {
            let measured = stand.latency(count, mode)
            p50["\(name) \(mode)", default: []].append(measured.p50)
            p99["\(name) \(mode)", default: []].append(measured.p99)
        }
    }
    func load(_ name: String) {
        for mode in ["keepalive", "close"] {
            let output = run(inClient + ["\(work)/httpbench", "load", url, String(seconds), "4", mode]).output
            rate["\(name) \(mode)", default: []].append(value("requests_per_s", in: output))
        }
    }
    let direct = "the pod's application", stolen = "stolen by the local server"
    // The agent listens in the program's family (IPv6 dual-stack for [::]): either way the program holds the
    // pod's socket itself.
    let stolenIPv6 = "stolen, local server on [::]"
    let mirrored = "mirrored to the local server"
    let mirroredIdle = "mirrored, developer side idle"
    let mirroredPod = "mirrored, pod side alone"
    for _ in 0..<options.rounds {
        latency(direct)
        load(direct)
        let steal = try stand.session("steal")
        latency(stolen)
        servers.stop(steal, signal: SIGTERM)
        let stealIPv6 = try stand.session("steal", listen: "[::]:9090")
        latency(stolenIPv6)
        servers.stop(stealIPv6, signal: SIGTERM)
        let mirror = try stand.session("mirror")
        load(mirrored)
        servers.stop(mirror, signal: SIGTERM)
        let mirrorIdle = try stand.session("mirror", idle: true)
        load(mirroredIdle)
        servers.stop(mirrorIdle, signal: SIGTERM)
        // The developer's side stopped (SIGSTOP) while the pod's copies: what mirroring costs the pod alone.
        let mirrorPod = try stand.session("mirror")
        let developerSide = [mirrorPod.processIdentifier] + childProcesses(of: mirrorPod.processIdentifier)
        for pid in developerSide { kill(pid, SIGSTOP) }
        load(mirroredPod)
        for pid in developerSide { kill(pid, SIGCONT) }
        servers.stop(mirrorPod, signal: SIGTERM)
    }
    print("Incoming HTTP (median of \(options.rounds)): a Go client in a namespace joined to the pod by a veth pair;")
    print(
        "latency: \(count) requests one at a time; rate: 4 clients for \(seconds) s; keep-alive / a new connection each"
    )
    print(
        pad("case", 32) + pad("keep-alive p50 µs", 19) + pad("p99 µs", 9) + pad("new conn p50 µs", 17)
            + pad("p99 µs", 9)
            + pad("req/s keep-alive", 18) + pad("×", 7) + pad("req/s new conn", 16) + "×")
    for name in [direct, stolen, stolenIPv6, mirrored, mirroredIdle, mirroredPod] {
        var line = pad(name, 32)
        if p50["\(name) keepalive"] != nil {
            for mode in ["keepalive", "close"] {
                line += pad(format(median(p50["\(name) \(mode)"]!)), mode == "keepalive" ? 19 : 17)
                line += pad(format(median(p99["\(name) \(mode)"]!)), 9)
            }
        } else {
            line += pad("", 54)
        }
        if rate["\(name) keepalive"] != nil {
            for mode in ["keepalive", "close"] {
                let value = median(rate["\(name) \(mode)"]!)
                line += pad(format(value, 0), mode == "keepalive" ? 18 : 16)
                line += pad(format(value / median(rate["\(direct) \(mode)"]!), 2), 7)
            }
        }
        print(line)
    }
    /// What stealing adds to the pod application's round trip at a percentile, as "+N µs".
    func added(_ percentile: [String: [Double]], _ mode: String, _ name: String) -> String {
        let difference = median(percentile["\(name) \(mode)"]!) - median(percentile["\(direct) \(mode)"]!)
        return String(format: "%+.0f µs", difference)
    }
    for (name, listener) in [(stolen, "127.0.0.1"), (stolenIPv6, "[::]")] {
        print(
            "added by stealing, local server on \(listener) (new connection): p50 \(added(p50, "close", name)) (target ≤ +300 µs), p99 \(added(p99, "close", name))"
        )
        print(
            "added by stealing, local server on \(listener) (keep-alive): p50 \(added(p50, "keepalive", name)), p99 \(added(p99, "keepalive", name))"
        )
    }
    print("target: the pod application's requests per second while mirrored within 10% of unmirrored (≥ 0.90×)")
    print("all of it shares this machine's CPUs: \"mirrored\" counts the local server's own work on every copied")
    print("request against the pod's rate; \"developer side idle\" runs sysmirror and it at SCHED_IDLE; \"pod side")
    print(
        "alone\" stops them (SIGSTOP) while the pod's side copies: the agent's and the kernel's cost, as with a laptop")
    print("")
}

// Remote files: an agent on a unix socket serving a pod root on this machine, beside local reads of the same
// files. The pod's /data/small and /data/large are the local files pod/data/small and pod/data/large.
func remoteFiles() throws {
    run(["cc", "-O2", "-static", "-pthread", "-o", "\(work)/file-reads", "\(options.programs)/file-reads.c"])
    run(["cc", "-O2", "-pthread", "-o", "\(work)/unotify-addfd", "\(options.programs)/unotify-addfd.c"])
    run(["cc", "-O2", "-pthread", "-o", "\(work)/unotify-min", "\(options.anchors)/unotify-min.c"])  // for --only
    let pod = "\(work)/pod"
    try FileManager.default.createDirectory(atPath: "\(pod)/data", withIntermediateDirectories: true)
    _ = FileManager.default.createFile(atPath: "\(pod)/data/small", contents: Data(repeating: 0x61, count: 2048))
    _ = FileManager.default.createFile(atPath: "\(pod)/data/large", contents: Data(repeating: 0x62, count: 100 << 20))
    let agent = Process()
    agent.executableURL = URL(fileURLWithPath: options.sysmirror)
    agent.arguments = [
        "agent", "--listen", "unix:\(work)/agent.sock", "--root", pod, "--token-file", "\(work)/token", "--quiet",
    ]
    try agent.run()
    defer { agent.terminate() }
    while !FileManager.default.fileExists(atPath: "\(work)/agent.sock") { usleep(10_000) }
    let remote = [
        options.sysmirror, "trace", "--quiet", "--agent", "unix:\(work)/agent.sock", "--token-file", "\(work)/token",
        "--",
    ]
    let fileCases: [(name: String, prefix: [String], root: String)] = [
        ("local file, native", [], pod),
        ("local file, sysmirror (routed, local)", [options.sysmirror, "trace", "--quiet", "--"], pod),
        ("remote file, first open (--fs-cache off)", remote.dropLast() + ["--fs-cache", "off", "--"], ""),
        ("remote file, sysmirror + agent (unix)", remote, ""),
    ]
    // The kernel's floors, open+read+close only: unotify-min answers with CONTINUE (a routed open), and
    // unotify-addfd as the file cache must (a new description of a kept copy, through ADDFD).
    let floorCases: [(name: String, prefix: [String])] = [
        ("floor: unotify-min (CONTINUE)", ["\(work)/unotify-min"]),
        ("floor: unotify-addfd (kept copy)", ["\(work)/unotify-addfd", "\(pod)/data/small"]),
    ]
    var p50: [String: [Double]] = [:]
    var p99: [String: [Double]] = [:]
    var throughput: [String: [Double]] = [:]
    var transfer: [String: [Double]] = [:]
    var opensPerSecond: [String: [Double]] = [:]
    var failures: [String: [Double]] = [:]
    let latencyCount = String(max(1000, options.iterations / 20))
    for _ in 0..<options.rounds {
        for item in fileCases {
            let latency = run(item.prefix + ["\(work)/file-reads", "latency", latencyCount, "\(item.root)/data/small"])
                .output
            p50[item.name, default: []].append(value("p50_ns", in: latency))
            p99[item.name, default: []].append(value("p99_ns", in: latency))
            let bulk = run(item.prefix + ["\(work)/file-reads", "throughput", "\(item.root)/data/large"]).output
            throughput[item.name, default: []].append(value("read_mb_s", in: bulk))
            transfer[item.name, default: []].append(value("open_ms", in: bulk))
            let threads = run(
                item.prefix + ["\(work)/file-reads", "threads", "64", "10000", "\(item.root)/data/small"]
            )
            .output
            opensPerSecond[item.name, default: []].append(value("opens_per_s", in: threads))
            failures[item.name, default: []].append(value("failures", in: threads))
        }
        for floor in floorCases {
            let latency = run(floor.prefix + ["\(work)/file-reads", "latency", latencyCount, "\(pod)/data/small"])
                .output
            p50[floor.name, default: []].append(value("p50_ns", in: latency))
            p99[floor.name, default: []].append(value("p99_ns", in: latency))
        }
    }
    print("Files (median of \(options.rounds)): open+read+close of a 2 KiB file; 1 MiB reads of an open 100 MiB file;")
    print("10,000 opens+close of the 2 KiB file from 64 threads")
    print(
        pad("case", 40) + pad("p50 µs", 9) + pad("p99 µs", 9) + pad("read MB/s", 11) + pad("× local", 9)
            + pad("100 MiB open ms", 17) + pad("opens/s", 10) + "failures")
    let localRead = median(throughput["local file, native"]!)
    for item in fileCases {
        let rate = median(throughput[item.name]!)
        print(
            pad(item.name, 40) + pad(format(median(p50[item.name]!) / 1000), 9)
                + pad(format(median(p99[item.name]!) / 1000), 9)
                + pad(format(rate, 0), 11) + pad(format(rate / localRead, 2), 9)
                + pad(format(median(transfer[item.name]!), 1), 17)
                + pad(format(median(opensPerSecond[item.name]!), 0), 10)
                + format(failures[item.name]!.max() ?? .nan, 0))
    }
    for floor in floorCases {
        print(
            pad(floor.name, 40) + pad(format(median(p50[floor.name]!) / 1000), 9)
                + pad(format(median(p99[floor.name]!) / 1000), 9))
    }
    let ratio = { (kept: String, routed: String) in format(median(p50[kept]!) / median(p50[routed]!), 2) }
    print(
        "a kept open: \(ratio("remote file, sysmirror + agent (unix)", "local file, sysmirror (routed, local)"))× the"
            + " routed local open; the floors' own ratio, ADDFD to CONTINUE: "
            + "\(ratio("floor: unotify-addfd (kept copy)", "floor: unotify-min (CONTINUE)"))×")
    print(
        "targets: remote p50 ≤ 100 µs, and kept (the file cache: every open after the first) ≤ 1.5× the routed local open;"
    )
    print("remote read throughput within 10% of local (≥ 0.90×); no failures")
}
