/// How one argument of a system call is read from the program and shown in the log.
public enum ArgumentKind: Sendable, Equatable {
    case fd
    /// A directory fd for the *at calls: AT_FDCWD shows as such.
    case dirfd
    /// A NUL-terminated path in the program's memory.
    case path
    /// A NUL-terminated name that is not a path (an extended attribute's).
    case name
    case openFlags
    /// A file mode; open and openat show it only with O_CREAT or O_TMPFILE, as strace does.
    case mode
    case accessMode
    case atFlags
    case statxMask
    /// `struct open_how` of openat2.
    case openHow
    /// A socket address whose length is the argument at `lengthIndex`.
    case socketAddress(lengthIndex: Int)
    /// `struct msghdr` of sendmsg: its destination address is what matters.
    case messageHeader
    /// Where a call writes a socket address (recvfrom's src_addr): shown as a pointer, never read.
    case addressBuffer
    case messageFlags
    /// A NULL-terminated array of strings (execve's argv).
    case stringArray
    case pointer
    case integer
}

/// What a call is about, which decides the fields it fills in the log.
public enum SyscallCategory: Sendable, Equatable {
    case file, exec, network
    /// uname: routed only when the pod's hostname is served.
    case system
}

/// The calls sysmirror can be asked about. The raw value is the kernel's name, as strace shows it; code
/// compares the case, never the name.
public enum Syscall: String, Sendable, CaseIterable {
    case open, openat, openat2, creat, stat, lstat, newfstatat, statx, access, faccessat, faccessat2
    case readlink, readlinkat, execve, execveat, connect, bind, listen, accept, accept4, sendto, sendmsg, recvfrom,
        recvmsg,
        uname
    case getxattr, lgetxattr, listxattr, llistxattr
}

/// What serves a routed call in the supervisor: the notification loop dispatches on it, in one place.
public enum SyscallService: Sendable, Equatable {
    /// A path: the file rules, and the pod's files (`FileCall`).
    case file
    /// Logged and continued.
    case exec
    /// A destination: the outgoing rules, and a socket of the pod.
    case outgoing
    /// Logged and continued: the program's bind stays local.
    case bind
    /// The pod's port is taken for the listening socket (incoming traffic).
    case listen
    /// The connection comes with the pod client's address (incoming traffic).
    case accept
    /// The pod's hostname.
    case hostname
    /// A datagram that may come from a pod peer through a relay: recvfrom and recvmsg report the peer's
    /// address.
    case datagramReceive
}

/// When the filter routes a call at all.
public struct SyscallRouting: OptionSet, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// Only when an agent serves the session (the hostname, extended attributes, which `ls -l` asks for each
    /// file and which must not fail locally for a file that exists only in the pod).
    public static let withAgent = SyscallRouting(rawValue: 1)
    /// Only when the pod's incoming traffic reaches the program (accept reports the pod's client).
    public static let withIncoming = SyscallRouting(rawValue: 2)
    /// Only when its address argument is set (sendto: send() on a connected socket never costs a round
    /// trip; recvfrom: recv() needs no address); see `SyscallSpec.addressArgument`.
    public static let withAddress = SyscallRouting(rawValue: 4)
    /// Only when UDP travels the link (an agent reached through a port-forward): program sockets then talk to
    /// sysmirror's relays, and recvfrom must report the pod peer's address for the relay's.
    public static let withLinkDatagrams = SyscallRouting(rawValue: 8)
}

/// One system call the supervisor may be asked about: its number, identity, argument kinds, and what
/// serves it, as data.
public struct SyscallSpec: Sendable, Equatable {
    public let number: Int32
    public let call: Syscall
    public let category: SyscallCategory
    public let arguments: [ArgumentKind]
    public let service: SyscallService
    public let routing: SyscallRouting
    /// The name the log shows.
    public var name: String { call.rawValue }

    public init(
        _ number: Int32, _ call: Syscall, _ category: SyscallCategory, _ arguments: [ArgumentKind],
        served service: SyscallService, routing: SyscallRouting = []
    ) {
        self.number = number
        self.call = call
        self.category = category
        self.arguments = arguments
        self.service = service
        self.routing = routing
    }

    /// The address argument that `withAddress` tests (sendto's dest_addr, recvfrom's src_addr).
    public var addressArgument: UInt32? {
        guard routing.contains(.withAddress) else { return nil }
        return arguments.firstIndex {
            switch $0 {
            case .socketAddress, .addressBuffer: true
            default: false
            }
        }.map(UInt32.init)
    }

    public static func == (left: SyscallSpec, right: SyscallSpec) -> Bool { left.number == right.number }
}

/// The calls the supervisor can route, for one architecture, looked up by number.
public struct SyscallTable: Sendable {
    public let specs: [SyscallSpec]
    /// Indexed by number: a lookup on the hot path is one bounds check.
    @usableFromInline let byNumber: [SyscallSpec?]

    public init(_ specs: [SyscallSpec]) {
        self.specs = specs
        var byNumber = [SyscallSpec?](repeating: nil, count: Int(specs.map(\.number).max() ?? 0) + 1)
        for spec in specs { byNumber[Int(spec.number)] = spec }
        self.byNumber = byNumber
    }

    @inlinable
    public subscript(number: Int32) -> SyscallSpec? {
        number >= 0 && Int(number) < byNumber.count ? byNumber[Int(number)] : nil
    }
    public subscript(call: Syscall) -> SyscallSpec? { specs.first { $0.call == call } }

    /// x86_64: the native ABI. i386 and x32 calls are not decoded (see docs/architecture.md).
    public static let x86_64 = SyscallTable([
        SyscallSpec(2, .open, .file, [.path, .openFlags, .mode], served: .file),
        SyscallSpec(257, .openat, .file, [.dirfd, .path, .openFlags, .mode], served: .file),
        SyscallSpec(437, .openat2, .file, [.dirfd, .path, .openHow, .integer], served: .file),
        SyscallSpec(85, .creat, .file, [.path, .mode], served: .file),
        SyscallSpec(4, .stat, .file, [.path, .pointer], served: .file),
        SyscallSpec(6, .lstat, .file, [.path, .pointer], served: .file),
        SyscallSpec(262, .newfstatat, .file, [.dirfd, .path, .pointer, .atFlags], served: .file),
        SyscallSpec(332, .statx, .file, [.dirfd, .path, .atFlags, .statxMask, .pointer], served: .file),
        SyscallSpec(21, .access, .file, [.path, .accessMode], served: .file),
        SyscallSpec(269, .faccessat, .file, [.dirfd, .path, .accessMode], served: .file),
        SyscallSpec(439, .faccessat2, .file, [.dirfd, .path, .accessMode, .atFlags], served: .file),
        SyscallSpec(89, .readlink, .file, [.path, .pointer, .integer], served: .file),
        SyscallSpec(267, .readlinkat, .file, [.dirfd, .path, .pointer, .integer], served: .file),
        SyscallSpec(59, .execve, .exec, [.path, .stringArray, .pointer], served: .exec),
        SyscallSpec(322, .execveat, .exec, [.dirfd, .path, .stringArray, .pointer, .atFlags], served: .exec),
        SyscallSpec(42, .connect, .network, [.fd, .socketAddress(lengthIndex: 2), .integer], served: .outgoing),
        SyscallSpec(49, .bind, .network, [.fd, .socketAddress(lengthIndex: 2), .integer], served: .bind),
        SyscallSpec(50, .listen, .network, [.fd, .integer], served: .listen),
        SyscallSpec(43, .accept, .network, [.fd, .pointer, .pointer], served: .accept, routing: .withIncoming),
        SyscallSpec(
            288, .accept4, .network, [.fd, .pointer, .pointer, .integer], served: .accept, routing: .withIncoming),
        SyscallSpec(
            44, .sendto, .network,
            [.fd, .pointer, .integer, .messageFlags, .socketAddress(lengthIndex: 5), .integer], served: .outgoing,
            routing: .withAddress),
        SyscallSpec(46, .sendmsg, .network, [.fd, .messageHeader, .messageFlags], served: .outgoing),
        SyscallSpec(
            45, .recvfrom, .network, [.fd, .pointer, .integer, .messageFlags, .addressBuffer, .pointer],
            served: .datagramReceive, routing: [.withAddress, .withLinkDatagrams]),
        // Every recvmsg where UDP travels the link: whether it asks for the sender is in memory, not in a
        // register the filter sees.
        SyscallSpec(
            47, .recvmsg, .network, [.fd, .pointer, .messageFlags], served: .datagramReceive,
            routing: .withLinkDatagrams),
        SyscallSpec(63, .uname, .system, [.pointer], served: .hostname, routing: .withAgent),
        SyscallSpec(191, .getxattr, .file, [.path, .name, .pointer, .integer], served: .file, routing: .withAgent),
        SyscallSpec(192, .lgetxattr, .file, [.path, .name, .pointer, .integer], served: .file, routing: .withAgent),
        SyscallSpec(194, .listxattr, .file, [.path, .pointer, .integer], served: .file, routing: .withAgent),
        SyscallSpec(195, .llistxattr, .file, [.path, .pointer, .integer], served: .file, routing: .withAgent),
    ])
}
