/// One argument as read at the time of the call; turned into text only when the log is written.
public enum ArgumentValue: Sendable, Equatable {
    case integer(UInt64)
    /// A C string (a path), without its NUL.
    case string([UInt8])
    /// A structure read from memory (a socket address, `open_how`).
    case bytes([UInt8])
    /// execve's argv: the strings read, and whether more followed.
    case strings([[UInt8]], truncated: Bool)
    /// The argument points at memory that could not be read: shown as the address, like strace.
    case fault(MemoryFault, address: UInt64)
}

/// A system call with its arguments read from the program: what the rules and the log see.
public struct DecodedSyscall: Sendable, Equatable {
    public let spec: SyscallSpec
    public let values: [ArgumentValue]

    public init(spec: SyscallSpec, values: [ArgumentValue]) {
        self.spec = spec
        self.values = values
    }

    /// The first path argument, when it could be read.
    public var path: [UInt8]? {
        for (kind, value) in zip(spec.arguments, values) where kind == .path {
            if case .string(let bytes) = value { return bytes }
        }
        return nil
    }

    /// The destination or local address of a network call, when there is one.
    public var socketAddress: SocketAddress? {
        for (kind, value) in zip(spec.arguments, values) {
            switch kind {
            case .socketAddress, .messageHeader:
                if case .bytes(let bytes) = value { return SocketAddress(bytes) }
            default: continue
            }
        }
        return nil
    }
}

/// The six raw argument registers of a call, inline (no allocation on the hot path).
public struct RawArguments: Sendable, Equatable {
    public var values: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64)

    public init(_ values: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64)) {
        self.values = values
    }

    public init(_ array: [UInt64]) {
        let a = array + Array(repeating: 0, count: max(0, 6 - array.count))
        values = (a[0], a[1], a[2], a[3], a[4], a[5])
    }

    @inlinable
    public subscript(index: Int) -> UInt64 {
        switch index {
        case 0: values.0
        case 1: values.1
        case 2: values.2
        case 3: values.3
        case 4: values.4
        default: values.5
        }
    }

    public static func == (lhs: RawArguments, rhs: RawArguments) -> Bool {
        (0..<6).allSatisfy { lhs[$0] == rhs[$0] }
    }
}

/// Reads a call's arguments from the program, as its table entry says. Pure apart from `memory`.
/// Inlinable so that it is specialized for the supervisor's memory reader: no generic dispatch per call.
public struct SyscallDecoder: Sendable {
    /// Linux's PATH_MAX, counting the NUL.
    public static let pathLimit = 4096
    /// How many argv strings the log shows; execve is rare, but argv can be long.
    public static let argumentLimit = 32
    @usableFromInline static let sizeofMessageHeader = 56
    @usableFromInline static let sizeofOpenHow = 24
    @usableFromInline static let maximumSocketAddress = 128

    @inlinable
    public init() {}

    @inlinable
    public func decode(_ spec: SyscallSpec, arguments raw: RawArguments, memory: some ProgramMemory) -> DecodedSyscall {
        var values: [ArgumentValue] = []
        values.reserveCapacity(spec.arguments.count)
        for (index, kind) in spec.arguments.enumerated() {
            values.append(decode(kind, raw[index], all: raw, memory: memory))
        }
        return DecodedSyscall(spec: spec, values: values)
    }

    @inlinable
    func decode(_ kind: ArgumentKind, _ value: UInt64, all raw: RawArguments, memory: some ProgramMemory)
        -> ArgumentValue
    {
        do {
            switch kind {
            case .path, .name:
                return .string(try memory.string(at: value, limit: Self.pathLimit))
            case .openHow:
                return .bytes(try memory.bytes(at: value, count: Self.sizeofOpenHow))
            case .socketAddress(let lengthIndex):
                if value == 0 { return .integer(0) }
                let length = Int(truncatingIfNeeded: Int32(truncatingIfNeeded: raw[lengthIndex]))
                guard length > 0 else { return .integer(value) }
                return .bytes(try memory.bytes(at: value, count: min(length, Self.maximumSocketAddress)))
            case .messageHeader:
                return try messageName(at: value, memory: memory)
            case .stringArray:
                return try strings(at: value, memory: memory)
            case .fd, .dirfd, .openFlags, .mode, .accessMode, .atFlags, .statxMask, .messageFlags, .pointer, .addressBuffer,
                .integer:
                return .integer(value)
            }
        } catch {
            return .fault(error, address: value)
        }
    }

    /// sendmsg's destination: `msg_name` and `msg_namelen` lead `struct msghdr`.
    @inlinable
    func messageName(at address: UInt64, memory: some ProgramMemory) throws(MemoryFault) -> ArgumentValue {
        let header = try memory.bytes(at: address, count: Self.sizeofMessageHeader)
        let name = header.loadLittleEndian(UInt64.self, at: 0)
        let length = Int(header.loadLittleEndian(UInt32.self, at: 8))
        guard name != 0, length > 0 else { return .integer(0) }
        return .bytes(try memory.bytes(at: name, count: min(length, Self.maximumSocketAddress)))
    }

    @inlinable
    func strings(at address: UInt64, memory: some ProgramMemory) throws(MemoryFault) -> ArgumentValue {
        guard address != 0 else { return .integer(0) }
        var strings: [[UInt8]] = []
        // The pointer array may end just before an unmapped page: take what is readable.
        let pointers = try memory.readable(at: address, count: 8 * (Self.argumentLimit + 1))
        for index in 0..<(pointers.count / 8) {
            let pointer = pointers.loadLittleEndian(UInt64.self, at: 8 * index)
            if pointer == 0 { return .strings(strings, truncated: false) }
            if index == Self.argumentLimit { break }
            strings.append(try memory.string(at: pointer, limit: Self.pathLimit))
        }
        return .strings(strings, truncated: true)
    }
}

extension Array where Element == UInt8 {
    /// A little-endian integer at `offset`; zero where the array is too short.
    @inlinable
    public func loadLittleEndian<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        var value: T = 0
        let size = MemoryLayout<T>.size
        guard offset >= 0, offset + size <= count else { return 0 }
        for index in (0..<size).reversed() {
            value = value << 8 | T(self[offset + index])
        }
        return value
    }
}
