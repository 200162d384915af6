import CSeccomp
import CSysmirror
import LinuxSystem
import SyscallDecoding

#if canImport(Glibc)
    import Glibc
#endif

/// Which calls a session routes to the supervisor.
public struct FilterPlan: Sendable {
    /// A call routed only when one of its arguments is not zero.
    public struct NonZeroArgument: Sendable {
        public let name: String
        public let index: UInt32
    }

    /// Calls routed whatever their arguments.
    public var routed: [String]
    /// Calls routed only when an argument is not zero (sendto with a destination address).
    public var routedWithNonZeroArgument: [NonZeroArgument]

    /// What `sysmirror trace` routes: the table's calls, as each spec's `routing` allows (sendto only with a
    /// destination, recvfrom only with an address and UDP on the link, some calls only with an agent or with
    /// incoming traffic); sendmsg unless told not to.
    public static func trace(
        routeSendmsg: Bool, withAgent: Bool = false, withIncoming: Bool = false, withLinkDatagrams: Bool = false
    ) -> FilterPlan {
        var available: SyscallRouting = []
        if withAgent { available.insert(.withAgent) }
        if withIncoming { available.insert(.withIncoming) }
        if withLinkDatagrams { available.insert(.withLinkDatagrams) }
        let specs = SyscallTable.x86_64.specs.filter {
            available.isSuperset(of: $0.routing.subtracting(.withAddress)) && (routeSendmsg || $0.call != .sendmsg)
        }
        return FilterPlan(
            routed: specs.filter { $0.addressArgument == nil }.map(\.name),
            routedWithNonZeroArgument: specs.compactMap { spec in
                spec.addressArgument.map { NonZeroArgument(name: spec.name, index: $0) }
            })
    }
}

/// A compiled classic-BPF seccomp program, ready to hand to the child before it execs.
public struct FilterProgram: Sendable {
    public let instructions: [sock_filter]
}

/// Why libseccomp could not build the filter.
public struct FilterError: Error, CustomStringConvertible {
    public let description: String
}

/// Compiles a plan with libseccomp: every ABI the CPU can enter (x86_64, i386, x32), binary-tree
/// dispatch, and unrouted calls allowed outright so the kernel's action cache skips the filter for them.
public enum SeccompFilter {
    public static let additionalArchitectures = ["x86", "x32"]

    public static func compile(_ plan: FilterPlan) throws(FilterError) -> FilterProgram {
        guard let context = seccomp_init(SCMP_ACT_ALLOW) else { throw FilterError(description: "seccomp_init failed") }
        defer { seccomp_release(context) }
        for name in additionalArchitectures {
            let token = seccomp_arch_resolve_name(name)
            guard token != 0 else { throw FilterError(description: "libseccomp does not know the \(name) ABI") }
            try check(seccomp_arch_add(context, token), "seccomp_arch_add(\(name))")
        }
        try check(seccomp_attr_set(context, SCMP_FLTATR_CTL_OPTIMIZE, 2), "seccomp_attr_set(OPTIMIZE)")
        for name in plan.routed {
            try check(seccomp_rule_add_array(context, SCMP_ACT_NOTIFY, try number(name), 0, nil), "rule \(name)")
        }
        for rule in plan.routedWithNonZeroArgument {
            var comparison = scmp_arg_cmp(arg: rule.index, op: SCMP_CMP_NE, datum_a: 0, datum_b: 0)
            try check(
                seccomp_rule_add_array(context, SCMP_ACT_NOTIFY, try number(rule.name), 1, &comparison),
                "rule \(rule.name)")
        }
        return FilterProgram(instructions: try export(context))
    }

    static func number(_ name: String) throws(FilterError) -> Int32 {
        let number = seccomp_syscall_resolve_name(name)
        guard number >= 0 else { throw FilterError(description: "libseccomp does not know the syscall \(name)") }
        return number
    }

    /// libseccomp 2.5 exports only to a file descriptor: a memfd, read back whole.
    static func export(_ context: scmp_filter_ctx) throws(FilterError) -> [sock_filter] {
        let fd = sysm_memfd("sysmirror-filter")
        guard fd >= 0 else { throw FilterError(description: "memfd_create: \(currentErrno())") }
        defer { close(fd) }
        try check(seccomp_export_bpf(context, fd), "seccomp_export_bpf")
        let size = Int(lseek(fd, 0, SEEK_END))
        let count = size / MemoryLayout<sock_filter>.stride
        let instructions = [sock_filter](unsafeUninitializedCapacity: count) { buffer, initialized in
            initialized = pread(fd, buffer.baseAddress, size, 0) == size ? count : 0
        }
        guard instructions.count == count, count > 0 else {
            throw FilterError(description: "could not read back the exported filter")
        }
        return instructions
    }

    static func check(_ result: Int32, _ what: String) throws(FilterError) {
        guard result == 0 else {
            throw FilterError(description: "libseccomp: \(what): \(String(cString: strerror(-result)))")
        }
    }

    /// The name libseccomp gives a call of another ABI, for the log.
    public static func name(of number: Int32, architecture: UInt32) -> String {
        guard let name = seccomp_syscall_resolve_num_arch(architecture, number) else { return "syscall_\(number)" }
        defer { free(name) }
        return String(cString: name)
    }
}
