import SyscallDecoding

/// The system call ABI a notification came through.
public enum ABI: String, Sendable, Equatable {
    case x86_64, i386, x32
}

/// What to do with one intercepted call.
public struct Decision: Sendable, Equatable {
    public let route: Route
    /// The errno to answer with, for routes that do not run the call.
    public let errno: Int32?
    /// Why, for the log.
    public let note: String?
    /// Serving it does something before the answer (injects an fd, asks the agent). Such decisions are
    /// checked with SECCOMP_IOCTL_NOTIF_ID_VALID first. A plain answer needs no check: the kernel's
    /// SECCOMP_IOCTL_NOTIF_SEND fails with ENOENT, atomically, for a call that is gone.
    public var hasEffects: Bool { route == .remote }

    public static let local = Decision(route: .local, errno: nil, note: nil)

    public init(route: Route, errno: Int32?, note: String?) {
        self.route = route
        self.errno = errno
        self.note = note
    }
}

/// Pure rules: no syscalls. Maps a decoded call to a route.
public struct RoutingPolicy: Sendable {
    static let enosys: Int32 = 38

    public init() {}

    /// Calls through the native ABI run locally (later: remote by file and network rules). Calls through
    /// i386 or x32 fail with ENOSYS: sysmirror does not decode them, and letting them run would let a
    /// program get around the rules.
    public func decide(_ call: DecodedSyscall?, abi: ABI) -> Decision {
        guard abi == .x86_64 else {
            return Decision(route: .denied, errno: Self.enosys, note: "the \(abi.rawValue) ABI is not served")
        }
        return .local
    }
}
