import SyscallDecoding

/// What an intercepted file call asks, in terms the rules and the agent understand.
public enum FileOperation: Sendable, Equatable {
    /// open, openat, openat2, creat: the flags (with creat's implied) and the creation mode.
    case open(flags: Int32, mode: UInt32)
    /// stat, lstat, newfstatat, statx; the program's buffer and its layout.
    case stat(followSymlinks: Bool, buffer: UInt64, layout: StatLayout)
    /// access, faccessat, faccessat2.
    case access(mode: Int32)
    /// readlink, readlinkat: the program's buffer and its size.
    case readlink(buffer: UInt64, size: Int)
    /// getxattr, lgetxattr (`list` false), listxattr, llistxattr (`list` true). The pod's attributes are not
    /// served: a file that exists has none.
    case extendedAttributes(followSymlinks: Bool, list: Bool)
}

/// The layout of the structure a stat call fills.
public enum StatLayout: Sendable, Equatable {
    case stat, statx
}

/// A file call: the operation, and the path as the program gave it with the directory it is relative to.
public struct FileCall: Sendable, Equatable {
    /// AT_FDCWD: the directory argument of the *at calls that means the cwd.
    public static let currentDirectory: Int32 = -100
    static let symlinkNoFollow: UInt64 = 0x100
    static let emptyPath: UInt64 = 0x1000
    static let create: Int32 = 0o100, truncate: Int32 = 0o1000, append: Int32 = 0o2000
    static let temporaryFile: Int32 = 0o20200000, accessModeMask: Int32 = 3

    public let operation: FileOperation
    /// The directory fd the path is relative to (AT_FDCWD for the cwd).
    public let directory: Int32
    public let path: [UInt8]

    public init(operation: FileOperation, directory: Int32, path: [UInt8]) {
        self.operation = operation
        self.directory = directory
        self.path = path
    }

    /// The file call in `call`; nil for calls that are not about a path (fstat through AT_EMPTY_PATH, exec,
    /// network) or whose path could not be read.
    public init?(_ call: DecodedSyscall) {
        guard call.spec.category == .file, let path = call.path else { return nil }
        func integer(_ index: Int) -> UInt64 {
            guard index < call.values.count, case .integer(let value) = call.values[index] else { return 0 }
            return value
        }
        func int32(_ index: Int) -> Int32 { Int32(truncatingIfNeeded: integer(index)) }
        let directory: Int32
        let operation: FileOperation
        switch call.spec.call {
        case .open:
            (directory, operation) = (
                Self.currentDirectory, .open(flags: int32(1), mode: UInt32(truncatingIfNeeded: integer(2)))
            )
        case .openat:
            (directory, operation) = (int32(0), .open(flags: int32(2), mode: UInt32(truncatingIfNeeded: integer(3))))
        case .openat2:
            guard case .bytes(let how) = call.values[2] else { return nil }
            let flags = Int32(truncatingIfNeeded: how.loadLittleEndian(UInt64.self, at: 0))
            let mode = UInt32(truncatingIfNeeded: how.loadLittleEndian(UInt64.self, at: 8))
            (directory, operation) = (int32(0), .open(flags: flags, mode: mode))
        case .creat:
            let flags = Self.create | 1 | Self.truncate
            (directory, operation) = (
                Self.currentDirectory, .open(flags: flags, mode: UInt32(truncatingIfNeeded: integer(1)))
            )
        case .stat, .lstat:
            let follow = call.spec.call == .stat
            (directory, operation) = (
                Self.currentDirectory, .stat(followSymlinks: follow, buffer: integer(1), layout: .stat)
            )
        case .newfstatat:
            let flags = integer(3)
            if flags & Self.emptyPath != 0 && path.isEmpty { return nil }
            let follow = flags & Self.symlinkNoFollow == 0
            (directory, operation) = (int32(0), .stat(followSymlinks: follow, buffer: integer(2), layout: .stat))
        case .statx:
            let flags = integer(2)
            if flags & Self.emptyPath != 0 && path.isEmpty { return nil }
            let follow = flags & Self.symlinkNoFollow == 0
            (directory, operation) = (int32(0), .stat(followSymlinks: follow, buffer: integer(4), layout: .statx))
        case .access:
            (directory, operation) = (Self.currentDirectory, .access(mode: int32(1)))
        case .faccessat, .faccessat2:
            (directory, operation) = (int32(0), .access(mode: int32(2)))
        case .readlink:
            (directory, operation) = (
                Self.currentDirectory, .readlink(buffer: integer(1), size: Int(truncatingIfNeeded: integer(2)))
            )
        case .getxattr, .lgetxattr, .listxattr, .llistxattr:
            let follow = call.spec.call == .getxattr || call.spec.call == .listxattr
            let list = call.spec.call == .listxattr || call.spec.call == .llistxattr
            (directory, operation) = (Self.currentDirectory, .extendedAttributes(followSymlinks: follow, list: list))
        case .readlinkat:
            (directory, operation) = (
                int32(0), .readlink(buffer: integer(2), size: Int(truncatingIfNeeded: integer(3)))
            )
        default:
            return nil
        }
        self.init(operation: operation, directory: directory, path: path)
    }

    /// Whether the call may change the file: the file rules send such calls to the pod only in write mode.
    public var isWriting: Bool {
        guard case .open(let flags, _) = operation else { return false }
        return flags & Self.accessModeMask != 0 || flags & (Self.create | Self.truncate | Self.append) != 0
            || flags & Self.temporaryFile == Self.temporaryFile
    }

    /// Whether the path needs a base (the cwd or the directory fd) to mean anything.
    public var isRelative: Bool { path.first != UInt8(ascii: "/") }
}

/// Lexical path arithmetic on bytes.
public enum PathNormalizer {
    /// `path` made absolute against `base` (an absolute directory), with `.`, `..` and repeated slashes
    /// removed, and a trailing slash kept. `..` is taken lexically: the rules see the path the program named.
    public static func absolute(_ path: [UInt8], base: [UInt8]) -> [UInt8] {
        let slash = UInt8(ascii: "/")
        let joined = path.first == slash ? path : base + [slash] + path
        var parts: [ArraySlice<UInt8>] = []
        for part in joined.split(separator: slash, omittingEmptySubsequences: true) {
            if part.elementsEqual([UInt8(ascii: ".")]) { continue }
            if part.elementsEqual([UInt8(ascii: "."), UInt8(ascii: ".")]) {
                _ = parts.popLast()
                continue
            }
            parts.append(part)
        }
        var result: [UInt8] = []
        result.reserveCapacity(joined.count)
        for part in parts {
            result.append(slash)
            result.append(contentsOf: part)
        }
        if result.isEmpty { return [slash] }
        // A trailing slash, `.` or `..` says "a directory": kept as a slash, so that the pod answers ENOTDIR
        // for a file, as the kernel would.
        let last = joined.split(separator: slash).last
        if joined.last == slash || last.map({ $0.allSatisfy { $0 == UInt8(ascii: ".") } && $0.count <= 2 }) == true {
            result.append(slash)
        }
        return result
    }
}
