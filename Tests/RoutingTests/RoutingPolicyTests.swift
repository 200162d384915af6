import Routing
import SyscallDecoding
import Testing

@Suite("Routing policy")
struct RoutingPolicyTests {
    let policy = RoutingPolicy()

    @Test("Calls through the native ABI run locally, with no check needed before answering")
    func native() throws {
        let spec = try #require(SyscallTable.x86_64[.openat])
        let call = DecodedSyscall(
            spec: spec, values: [.integer(0), .string(Array("/etc/hosts".utf8)), .integer(0), .integer(0)])
        let decision = policy.decide(call, abi: .x86_64)
        #expect(decision == .local)
        #expect(!decision.hasEffects)
    }

    @Test("Calls through i386 and x32 fail with ENOSYS and say why", arguments: [ABI.i386, ABI.x32])
    func foreign(abi: ABI) {
        let decision = policy.decide(nil, abi: abi)
        #expect(decision.route == .denied)
        #expect(decision.errno == 38)
        #expect(decision.note == "the \(abi.rawValue) ABI is not served")
    }
}

@Suite("Routing policy with an agent")
struct RemoteRoutingTests {
    let policy = RoutingPolicy(
        files: try! FileRules(mode: .read, home: "/home/dev", workingDirectory: "/home/dev/app", program: nil),
        servesHostname: true)

    func openat(_ path: String, flags: Int32 = 0) -> (DecodedSyscall, FileCall) {
        let call = DecodedSyscall(
            spec: SyscallTable.x86_64[.openat]!,
            values: [
                .integer(UInt64(bitPattern: -100)), .string(Array(path.utf8)), .integer(UInt64(flags)), .integer(0),
            ])
        return (call, FileCall(call)!)
    }

    @Test func remoteReadsHaveEffectsAndAreCheckedFirst() {
        let (call, file) = openat("/var/run/secrets/token")
        let decision = policy.decide(call, abi: .x86_64, file: file, path: file.path)
        #expect(decision == .remote)
        #expect(decision.hasEffects)
    }

    @Test func credentialsAreNotFoundAndSayWhy() {
        let (call, file) = openat("/home/dev/.kube/config")
        let decision = policy.decide(call, abi: .x86_64, file: file, path: file.path)
        #expect(decision.route == .notFound)
        #expect(decision.errno == 2)
    }

    @Test func writeModeSendsReadWriteOpensToThePodAndReadModeKeepsThemLocal() throws {
        let write = RoutingPolicy(files: try FileRules(mode: .write, home: nil, workingDirectory: nil, program: nil))
        let (call, file) = openat("/data/db", flags: 2)
        #expect(write.decide(call, abi: .x86_64, file: file, path: file.path) == .remote)
        #expect(policy.decide(call, abi: .x86_64, file: file, path: file.path) == .local)
    }

    @Test func theHostnameComesFromThePod() {
        let (call, file) = openat("/proc/sys/kernel/hostname")
        #expect(policy.decide(call, abi: .x86_64, file: file, path: file.path) == .remote)
        let (other, otherFile) = openat("/proc/sys/kernel/ostype")
        #expect(policy.decide(other, abi: .x86_64, file: otherFile, path: otherFile.path) == .local)
        let uname = DecodedSyscall(spec: SyscallTable.x86_64[.uname]!, values: [.integer(0x1000)])
        #expect(policy.decide(uname, abi: .x86_64) == .remote)
    }
}

@Suite("Routing policy for outgoing traffic")
struct OutgoingPolicyTests {
    let policy = RoutingPolicy(outgoing: try! OutgoingRules())
    static let web: [UInt8] = [2, 0, 0x1f, 0x90, 10, 96, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0]
    static let loopback: [UInt8] = [2, 0, 0x1f, 0x90, 127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    let tcp = SocketFacts(family: 2, transport: .tcp, connected: false, inPod: false)

    func call(_ name: Syscall, _ address: [UInt8]) -> DecodedSyscall {
        let spec = SyscallTable.x86_64[name]!
        var values: [ArgumentValue] = spec.arguments.map { _ in .integer(0) }
        let index = spec.arguments.firstIndex { if case .socketAddress = $0 { true } else { false } }!
        values[index] = .bytes(address)
        return DecodedSyscall(spec: spec, values: values)
    }

    @Test func connectsLeaveFromThePodExceptToLoopback() {
        #expect(policy.decide(call(.connect, Self.web), abi: .x86_64, socket: tcp) == .remote)
        #expect(policy.decide(call(.connect, Self.loopback), abi: .x86_64, socket: tcp) == .local)
        #expect(RoutingPolicy().decide(call(.connect, Self.web), abi: .x86_64, socket: tcp) == .local)
    }

    @Test func whatTheKernelWouldRefuseRunsLocally() {
        var connected = tcp
        connected.connected = true
        #expect(policy.decide(call(.connect, Self.web), abi: .x86_64, socket: connected) == .local)
        let ipv6 = SocketFacts(family: 10, transport: .tcp, connected: false, inPod: false)
        #expect(policy.decide(call(.connect, Self.web), abi: .x86_64, socket: ipv6) == .local)
        #expect(policy.decide(call(.sendto, Self.web), abi: .x86_64, socket: tcp) == .local)
        let raw = SocketFacts(family: 2, transport: nil, connected: false, inPod: false)
        #expect(policy.decide(call(.connect, Self.web), abi: .x86_64, socket: raw) == .local)
    }

    @Test func datagramsAndPodSocketsAreServed() {
        let udp = SocketFacts(family: 2, transport: .udp, connected: true, inPod: false)
        #expect(policy.decide(call(.sendto, Self.web), abi: .x86_64, socket: udp) == .remote)
        #expect(policy.decide(call(.connect, Self.web), abi: .x86_64, socket: udp) == .remote)
        var moved = udp
        moved.inPod = true
        let decision = policy.decide(call(.sendto, Self.loopback), abi: .x86_64, socket: moved)
        #expect(decision.route == .remote && decision.note == "a socket of the pod")
    }
}
