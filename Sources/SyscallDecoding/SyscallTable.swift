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

/// One system call the supervisor may be asked about: its number, name and argument kinds.
public struct SyscallSpec: Sendable, Equatable {
    public let number: Int32
    public let name: String
    public let category: SyscallCategory
    public let arguments: [ArgumentKind]

    public init(_ number: Int32, _ name: String, _ category: SyscallCategory, _ arguments: [ArgumentKind]) {
        self.number = number
        self.name = name
        self.category = category
        self.arguments = arguments
    }
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
    public subscript(name: String) -> SyscallSpec? { specs.first { $0.name == name } }

    /// x86_64: the native ABI. i386 and x32 calls are not decoded (see docs/architecture.md).
    public static let x86_64 = SyscallTable([
        SyscallSpec(2, "open", .file, [.path, .openFlags, .mode]),
        SyscallSpec(257, "openat", .file, [.dirfd, .path, .openFlags, .mode]),
        SyscallSpec(437, "openat2", .file, [.dirfd, .path, .openHow, .integer]),
        SyscallSpec(85, "creat", .file, [.path, .mode]),
        SyscallSpec(4, "stat", .file, [.path, .pointer]),
        SyscallSpec(6, "lstat", .file, [.path, .pointer]),
        SyscallSpec(262, "newfstatat", .file, [.dirfd, .path, .pointer, .atFlags]),
        SyscallSpec(332, "statx", .file, [.dirfd, .path, .atFlags, .statxMask, .pointer]),
        SyscallSpec(21, "access", .file, [.path, .accessMode]),
        SyscallSpec(269, "faccessat", .file, [.dirfd, .path, .accessMode]),
        SyscallSpec(439, "faccessat2", .file, [.dirfd, .path, .accessMode, .atFlags]),
        SyscallSpec(89, "readlink", .file, [.path, .pointer, .integer]),
        SyscallSpec(267, "readlinkat", .file, [.dirfd, .path, .pointer, .integer]),
        SyscallSpec(59, "execve", .exec, [.path, .stringArray, .pointer]),
        SyscallSpec(322, "execveat", .exec, [.dirfd, .path, .stringArray, .pointer, .atFlags]),
        SyscallSpec(42, "connect", .network, [.fd, .socketAddress(lengthIndex: 2), .integer]),
        SyscallSpec(49, "bind", .network, [.fd, .socketAddress(lengthIndex: 2), .integer]),
        SyscallSpec(50, "listen", .network, [.fd, .integer]),
        SyscallSpec(43, "accept", .network, [.fd, .pointer, .pointer]),
        SyscallSpec(288, "accept4", .network, [.fd, .pointer, .pointer, .integer]),
        SyscallSpec(
            44, "sendto", .network,
            [.fd, .pointer, .integer, .messageFlags, .socketAddress(lengthIndex: 5), .integer]),
        SyscallSpec(46, "sendmsg", .network, [.fd, .messageHeader, .messageFlags]),
        SyscallSpec(63, "uname", .system, [.pointer]),
        SyscallSpec(191, "getxattr", .file, [.path, .name, .pointer, .integer]),
        SyscallSpec(192, "lgetxattr", .file, [.path, .name, .pointer, .integer]),
        SyscallSpec(194, "listxattr", .file, [.path, .pointer, .integer]),
        SyscallSpec(195, "llistxattr", .file, [.path, .pointer, .integer]),
    ])

    /// Calls routed only when an agent serves the session: the hostname, and extended attributes (which
    /// `ls -l` asks for each file, and which must not fail locally for a file that exists only in the pod).
    public static let servedOnlyWithAnAgent = ["uname", "getxattr", "lgetxattr", "listxattr", "llistxattr"]

    /// Calls routed only when the pod's incoming traffic reaches the program: accept reports the pod's client.
    public static let servedOnlyWithIncoming = ["accept", "accept4"]
}
