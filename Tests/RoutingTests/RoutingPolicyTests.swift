import Routing
import SyscallDecoding
import Testing

@Suite("Routing policy")
struct RoutingPolicyTests {
    let policy = RoutingPolicy()

    @Test("Calls through the native ABI run locally, with no check needed before answering")
    func native() throws {
        let spec = try #require(SyscallTable.x86_64["openat"])
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
            spec: SyscallTable.x86_64["openat"]!,
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
        let uname = DecodedSyscall(spec: SyscallSpec(63, "uname", .file, [.pointer]), values: [.integer(0x1000)])
        #expect(policy.decide(uname, abi: .x86_64) == .remote)
    }
}
