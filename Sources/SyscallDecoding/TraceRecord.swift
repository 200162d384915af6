/// Trace events as bytes, for the hand-off from the receiving thread to the log writer.
///
/// The receiving thread appends each event to one shared byte buffer and frees the event's own arrays right
/// away, on its own thread; the writer decodes on its side. So no memory allocated on one thread is freed on
/// the other, which would keep the allocator's per-thread cache empty on the hot path. Little-endian; a
/// record starts with its length, so a reader can always skip or stop at a damaged one.
public enum TraceRecord {
    public static func append(_ event: TraceEvent, to buffer: inout [UInt8]) {
        let start = buffer.count
        buffer.appendInteger(UInt32(0))  // the length, filled in below
        buffer.appendInteger(event.time)
        buffer.appendInteger(event.pid)
        buffer.appendInteger(event.durationNanos)
        buffer.append(routeCode(event.route))
        switch event.outcome {
        case .continued: buffer.append(0); buffer.appendInteger(Int64(0))
        case .returned(let value): buffer.append(1); buffer.appendInteger(value)
        case .failed(let errno): buffer.append(2); buffer.appendInteger(Int64(errno))
        case .interrupted: buffer.append(3); buffer.appendInteger(Int64(0))
        }
        buffer.appendBytes(event.syscall.utf8)
        buffer.appendOptionalBytes(event.note?.utf8)
        if let arguments = event.arguments {
            buffer.append(1)
            buffer.appendInteger(arguments.spec.number)
            buffer.append(UInt8(arguments.values.count))
            for value in arguments.values { append(value, to: &buffer) }
        } else {
            buffer.append(0)
        }
        let length = UInt32(buffer.count - start)
        withUnsafeBytes(of: length.littleEndian) { bytes in
            for index in 0..<4 { buffer[start + index] = bytes[index] }
        }
    }

    /// Every whole record in `buffer`, in order. Stops at the first damaged one.
    public static func decode(_ buffer: [UInt8], table: SyscallTable) -> [TraceEvent] {
        var events: [TraceEvent] = []
        var reader = ByteReader(buffer)
        while let length = reader.integer(UInt32.self), length >= 4 {
            let end = reader.offset + Int(length) - 4
            guard end <= buffer.count, let event = decodeEvent(&reader, table: table), reader.offset == end else {
                break
            }
            events.append(event)
        }
        return events
    }

    static func decodeEvent(_ reader: inout ByteReader, table: SyscallTable) -> TraceEvent? {
        guard let time = reader.integer(UInt64.self), let pid = reader.integer(Int32.self),
            let duration = reader.integer(UInt64.self), let route = reader.byte().flatMap(route(code:)),
            let outcomeKind = reader.byte(), let outcomeValue = reader.integer(Int64.self),
            let syscall = reader.bytes(), let note = reader.optionalBytes(), let hasArguments = reader.byte()
        else { return nil }
        let outcome: Outcome
        switch outcomeKind {
        case 0: outcome = .continued
        case 1: outcome = .returned(outcomeValue)
        case 2: outcome = .failed(errno: Int32(truncatingIfNeeded: outcomeValue))
        case 3: outcome = .interrupted
        default: return nil
        }
        var arguments: DecodedSyscall?
        if hasArguments == 1 {
            guard let number = reader.integer(Int32.self), let spec = table[number], let count = reader.byte(),
                Int(count) == spec.arguments.count
            else { return nil }
            var values: [ArgumentValue] = []
            for _ in 0..<count {
                guard let value = decodeValue(&reader) else { return nil }
                values.append(value)
            }
            arguments = DecodedSyscall(spec: spec, values: values)
        }
        // A decoded call's name is its table entry's: no string of its own to make for every event.
        let name = arguments.map(\.spec.name) ?? String(decoding: syscall, as: UTF8.self)
        return TraceEvent(
            time: time, pid: pid, syscall: name, arguments: arguments,
            route: route, outcome: outcome, durationNanos: duration,
            note: note.map { String(decoding: $0, as: UTF8.self) })
    }

    static func append(_ value: ArgumentValue, to buffer: inout [UInt8]) {
        switch value {
        case .integer(let integer):
            buffer.append(0)
            buffer.appendInteger(integer)
        case .string(let bytes):
            buffer.append(1)
            buffer.appendBytes(bytes)
        case .bytes(let bytes):
            buffer.append(2)
            buffer.appendBytes(bytes)
        case .strings(let strings, let truncated):
            buffer.append(3)
            buffer.append(truncated ? 1 : 0)
            buffer.appendInteger(UInt32(strings.count))
            for string in strings { buffer.appendBytes(string) }
        case .fault(let fault, let address):
            buffer.append(4)
            switch fault {
            case .unreadable(let errno): buffer.append(0); buffer.appendInteger(errno)
            case .unterminated: buffer.append(1); buffer.appendInteger(Int32(0))
            case .tooLong: buffer.append(2); buffer.appendInteger(Int32(0))
            }
            buffer.appendInteger(address)
        }
    }

    static func decodeValue(_ reader: inout ByteReader) -> ArgumentValue? {
        switch reader.byte() {
        case 0: return reader.integer(UInt64.self).map(ArgumentValue.integer)
        case 1: return reader.bytes().map(ArgumentValue.string)
        case 2: return reader.bytes().map(ArgumentValue.bytes)
        case 3:
            guard let truncated = reader.byte(), let count = reader.integer(UInt32.self) else { return nil }
            var strings: [[UInt8]] = []
            for _ in 0..<count {
                guard let string = reader.bytes() else { return nil }
                strings.append(string)
            }
            return .strings(strings, truncated: truncated == 1)
        case 4:
            guard let kind = reader.byte(), let errno = reader.integer(Int32.self),
                let address = reader.integer(UInt64.self)
            else { return nil }
            let fault: MemoryFault
            switch kind {
            case 0: fault = .unreadable(errno: errno)
            case 1: fault = .unterminated
            case 2: fault = .tooLong
            default: return nil
            }
            return .fault(fault, address: address)
        default: return nil
        }
    }

    static func routeCode(_ route: Route) -> UInt8 {
        switch route {
        case .local: 0
        case .remote: 1
        case .notFound: 2
        case .denied: 3
        case .cached: 4
        }
    }

    static func route(code: UInt8) -> Route? {
        switch code {
        case 0: .local
        case 1: .remote
        case 2: .notFound
        case 3: .denied
        case 4: .cached
        default: nil
        }
    }
}

extension Array where Element == UInt8 {
    mutating func appendInteger<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }

    /// Length-prefixed; takes a String's UTF-8 view as it is, so a name costs no array of its own.
    mutating func appendBytes(_ bytes: some Collection<UInt8>) {
        appendInteger(UInt32(bytes.count))
        append(contentsOf: bytes)
    }

    /// nil is written as the length 0xFFFF_FFFF.
    mutating func appendOptionalBytes(_ bytes: String.UTF8View?) {
        guard let bytes else { return appendInteger(UInt32.max) }
        appendBytes(bytes)
    }
}

/// Reads what `Array.appendInteger` and friends wrote, returning nil past the end instead of trapping.
struct ByteReader {
    let buffer: [UInt8]
    var offset = 0

    init(_ buffer: [UInt8]) { self.buffer = buffer }

    mutating func byte() -> UInt8? {
        guard offset < buffer.count else { return nil }
        defer { offset += 1 }
        return buffer[offset]
    }

    mutating func integer<T: FixedWidthInteger>(_: T.Type) -> T? {
        let size = MemoryLayout<T>.size
        guard offset + size <= buffer.count else { return nil }
        defer { offset += size }
        return buffer.loadLittleEndian(T.self, at: offset)
    }

    mutating func bytes() -> [UInt8]? {
        guard let count = integer(UInt32.self), offset + Int(count) <= buffer.count else { return nil }
        defer { offset += Int(count) }
        return Array(buffer[offset..<offset + Int(count)])
    }

    mutating func optionalBytes() -> [UInt8]?? {
        guard offset + 4 <= buffer.count else { return nil }
        if buffer.loadLittleEndian(UInt32.self, at: offset) == UInt32.max {
            offset += 4
            return .some(nil)
        }
        return bytes().map { .some($0) }
    }
}
