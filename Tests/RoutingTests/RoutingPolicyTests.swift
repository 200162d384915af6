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
