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
    public static let remote = Decision(route: .remote, errno: nil, note: nil)

    public init(route: Route, errno: Int32?, note: String?) {
        self.route = route
        self.errno = errno
        self.note = note
    }
}

/// Pure rules: no syscalls. Maps a decoded call to a route.
public struct RoutingPolicy: Sendable {
    static let enosys: Int32 = 38, enoent: Int32 = 2
    /// Where the kernel shows the hostname; Go's os.Hostname reads it.
    public static let hostnameFile = Array("/proc/sys/kernel/hostname".utf8)

    /// The file rules; nil when no agent serves the session (everything runs locally).
    public let files: FileRules?
    /// Whether the pod's hostname replaces the local one (uname, /proc/sys/kernel/hostname).
    public let servesHostname: Bool
    /// The outgoing rules; nil when no agent serves the session.
    public let outgoing: OutgoingRules?

    public init(files: FileRules? = nil, servesHostname: Bool = false, outgoing: OutgoingRules? = nil) {
        self.files = files
        self.servesHostname = servesHostname
        self.outgoing = outgoing
    }

    /// Calls through i386 or x32 fail with ENOSYS: sysmirror does not decode them, and letting them run would
    /// let a program get around the rules. File calls follow the file rules, given `path`, the call's path
    /// made absolute; everything else runs locally.
    public func decide(
        _ call: DecodedSyscall?, abi: ABI, file: FileCall? = nil, path: [UInt8]? = nil, socket: SocketFacts? = nil
    ) -> Decision {
        guard abi == .x86_64 else {
            return Decision(route: .denied, errno: Self.enosys, note: "the \(abi.rawValue) ABI is not served")
        }
        if servesHostname && call?.spec.service == .hostname { return .remote }
        if let call, let socket { return decide(network: call, socket: socket) }
        guard let files, let file, let path else { return .local }
        if servesHostname && path == Self.hostnameFile { return .remote }
        switch files.route(path, writing: file.isWriting) {
        case .local:
            return .local
        case .notFound:
            return Decision(route: .notFound, errno: Self.enoent, note: "file rule: not_found")
        case .remote:
            return .remote
        }
    }

    /// connect, sendto and sendmsg with an IPv4 or IPv6 destination. What the kernel would refuse (a
    /// destination of another family, connect on a connected stream, an address on a stream) runs locally,
    /// so that the program gets the kernel's own errno.
    func decide(network call: DecodedSyscall, socket: SocketFacts) -> Decision {
        guard let outgoing, let destination = call.socketAddress, let transport = socket.transport else {
            return .local
        }
        switch (destination, socket.family) {
        case (.inet, SocketFacts.inet), (.inet6, SocketFacts.inet6): break
        default: return .local
        }
        if transport == .tcp && (call.spec.call != .connect || socket.connected) { return .local }
        if socket.inPod { return Decision(route: .remote, errno: nil, note: "a socket of the pod") }
        return outgoing.route(destination, transport: transport) == .remote ? .remote : .local
    }
}

/// What the supervisor found out about the socket of a network call (the plumbing reads it; rules use it).
public struct SocketFacts: Sendable, Equatable {
    static let inet: Int32 = 2, inet6: Int32 = 10
    public var family: Int32
    /// nil: neither a stream nor a datagram socket.
    public var transport: Transport?
    public var connected: Bool
    /// Made in the pod's network namespace already (an earlier remote call put it there).
    public var inPod: Bool

    public init(family: Int32, transport: Transport?, connected: Bool, inPod: Bool) {
        self.family = family
        self.transport = transport
        self.connected = connected
        self.inPod = inPod
    }
}
