import CSysmirror
import Routing
import SyscallDecoding

/// One intercepted system call waiting for an answer (`struct seccomp_notif`).
public struct Notification: Sendable {
    /// The cookie that names this call in every answer; valid until answered or interrupted.
    public let id: UInt64
    /// The calling thread's id: sockets and fds belong to its thread group.
    public let pid: Int32
    public let number: Int32
    /// AUDIT_ARCH_* of the entry point.
    public let architecture: UInt32
    public let arguments: RawArguments

    package init(_ raw: seccomp_notif) {
        id = raw.id
        pid = Int32(bitPattern: raw.pid)
        number = raw.data.nr
        architecture = raw.data.arch
        arguments = RawArguments(raw.data.args)
    }

    static let auditArchX86_64: UInt32 = 0xC000_003E
    static let auditArchI386: UInt32 = 0x4000_0003
    static let x32SyscallBit: Int32 = 0x4000_0000

    /// The entry point the call came through: on x86_64, x32 calls carry a bit in the number.
    public var abi: ABI {
        if architecture == Self.auditArchI386 { return .i386 }
        return number & Self.x32SyscallBit != 0 ? .x32 : .x86_64
    }
}
