import NameResolution

/// Why bytes from the peer are not a valid frame. The session cannot continue after one: the stream has
/// lost its framing or the peer is not speaking this protocol.
public enum ProtocolViolation: Error, Sendable, Equatable, CustomStringConvertible {
    /// The length field is below the header's size or above `Frame.maximumLength`.
    case badLength(UInt32)
    /// A known message type whose payload does not parse.
    case malformed(String)

    public var description: String {
        switch self {
        case .badLength(let length):
            "a frame announced \(length) bytes (allowed: \(Frame.headerLength)...\(Frame.maximumLength))"
        case .malformed(let what): "malformed \(what)"
        }
    }
}

/// The framing: `length: UInt32 | type: UInt8 | id: UInt32 | payload`, big-endian, where `length` counts
/// the bytes after itself.
public enum Frame {
    /// type + id.
    public static let headerLength = 5
    /// The largest frame either side accepts: chunks are smaller, so a larger length means garbage.
    public static let maximumLength = 1 << 20
    /// The size of file content and entry chunks: large enough for throughput, small enough that a chunk
    /// never holds up a small response for long.
    public static let chunkSize = 256 << 10
    /// `hello`'s first four bytes, "SYSM": tells a sysmirror peer from anything else on the port.
    static let magic: UInt32 = 0x5359_534D

    /// The result of looking at the start of a byte stream.
    public enum Parsed: Sendable, Equatable {
        /// Not a whole frame yet.
        case incomplete
        /// A frame, and how many bytes it took.
        case message(Message, consumed: Int)
    }

    /// Parses the first frame of `bytes`. Never reads beyond them and never traps, whatever the input:
    /// the fuzz test in AgentProtocolTests holds it to that.
    public static func parse(_ bytes: UnsafeRawBufferPointer) throws(ProtocolViolation) -> Parsed {
        guard bytes.count >= 4 else { return .incomplete }
        var reader = ByteReader(bytes)
        let length = reader.uint32()!
        guard length >= headerLength, length <= maximumLength else { throw .badLength(length) }
        guard bytes.count >= 4 + Int(length) else { return .incomplete }
        let type = reader.uint8()!
        let id = reader.uint32()!
        var payload = ByteReader(UnsafeRawBufferPointer(rebasing: bytes[9..<(4 + Int(length))]))
        let message = try decode(type: type, id: id, payload: &payload)
        return .message(message, consumed: 4 + Int(length))
    }

    /// Convenience for tests and small frames.
    public static func parse(_ bytes: [UInt8]) throws(ProtocolViolation) -> Parsed {
        let result = bytes.withUnsafeBytes { raw in Result { () throws(ProtocolViolation) in try parse(raw) } }
        return try result.get()
    }

    /// Appends the frame of `message` to `buffer`.
    public static func encode(_ message: Message, into buffer: inout [UInt8]) {
        let start = buffer.count
        buffer.append(contentsOf: [0, 0, 0, 0])
        var writer = ByteWriter(buffer: buffer)
        writer.encode(message)
        buffer = writer.buffer
        let length = UInt32(buffer.count - start - 4)
        withUnsafeBytes(of: length.bigEndian) { raw in
            for index in 0..<4 { buffer[start + index] = raw[index] }
        }
    }

    public static func encode(_ message: Message) -> [UInt8] {
        var buffer: [UInt8] = []
        encode(message, into: &buffer)
        return buffer
    }

    enum TypeCode: UInt8 {
        case hello = 0x01, welcome = 0x02, refused = 0x03, protocolError = 0x04
        case environment = 0x10, hostname = 0x11, open = 0x12, stat = 0x13, access = 0x14, readlink = 0x15
        case socket = 0x16, connectionEvents = 0x17, connect = 0x18, listen = 0x19, takeIncoming = 0x1A, ping = 0x1B
        case stolenListener = 0x1C, resolve = 0x1D, datagrams = 0x1E, watch = 0x1F
        case failure = 0x80, done = 0x81, opened = 0x82, metadata = 0x83, environmentValue = 0x84, text = 0x85
        case incoming = 0x86, mirror = 0x87, answers = 0x88, invalidated = 0x89, unwatched = 0x8A, notice = 0x8B
        case chunk = 0xA0, end = 0xA1, cancel = 0xA2, credit = 0xA3
    }

    static func decode(type: UInt8, id: UInt32, payload p: inout ByteReader) throws(ProtocolViolation) -> Message {
        guard let code = TypeCode(rawValue: type) else { return .unknown(type: type, id: id) }
        func need<T>(_ value: T?, _ what: String) throws(ProtocolViolation) -> T {
            guard let value else { throw .malformed(what) }
            return value
        }
        switch code {
        case .hello:
            guard try need(p.uint32(), "hello") == magic else { throw .malformed("hello (not a sysmirror client)") }
            return .hello(version: try need(p.uint16(), "hello"), token: p.rest())
        case .welcome:
            return .welcome(version: try need(p.uint16(), "welcome"), agent: p.restText())
        case .refused:
            return .refused(version: try need(p.uint16(), "refused"), reason: p.restText())
        case .protocolError:
            return .protocolError(p.restText())
        case .environment: return .request(id: id, .environment)
        case .hostname: return .request(id: id, .hostname)
        case .open:
            let flags = try need(p.int32(), "open")
            let mode = try need(p.uint32(), "open")
            return .request(id: id, .open(path: p.rest(), flags: flags, mode: mode))
        case .stat:
            let follow = try need(p.uint8(), "stat")
            return .request(id: id, .stat(path: p.rest(), followSymlinks: follow != 0))
        case .access:
            let mode = try need(p.int32(), "access")
            return .request(id: id, .access(path: p.rest(), mode: mode))
        case .readlink: return .request(id: id, .readlink(path: p.rest()))
        case .socket:
            let family = try need(p.int32(), "socket")
            let type = try need(p.int32(), "socket")
            return .request(id: id, .socket(family: family, type: type, protocol: try need(p.int32(), "socket")))
        case .connectionEvents: return .request(id: id, .connectionEvents)
        case .connect: return .request(id: id, .connect(address: p.rest()))
        case .listen:
            let port = try need(p.uint16(), "listen")
            let mode = try need(p.uint8().flatMap(IncomingSubscription.Mode.init), "listen (mode)")
            let header = try need(p.text(), "listen (header pattern)")
            let path = try need(p.text(), "listen (path pattern)")
            let family = try need(p.int32(), "listen (family)")
            return .request(
                id: id,
                .listen(
                    IncomingSubscription(
                        port: port, mode: mode, headerPattern: header, pathPattern: path, family: family,
                        developer: p.restText())))
        case .takeIncoming: return .request(id: id, .takeIncoming(connection: try need(p.uint64(), "take")))
        case .ping: return .request(id: id, .ping)
        case .stolenListener:
            let port = try need(p.uint16(), "stolen listener")
            return .request(id: id, .stolenListener(port: port, family: try need(p.int32(), "stolen listener")))
        case .resolve:
            let serverLength = try need(p.uint8(), "resolve")
            let server = try need(p.bytes(Int(serverLength)), "resolve (server)")
            var questions: [DNSQuestion] = []
            while !p.isAtEnd {
                let type = try need(p.uint16(), "resolve (question)")
                let `class` = try need(p.uint16(), "resolve (question)")
                questions.append(DNSQuestion(name: try need(p.text(), "resolve (name)"), type: type, class: `class`))
            }
            return .request(id: id, .resolve(server: server, questions: questions))
        case .datagrams: return .request(id: id, .datagrams(family: try need(p.int32(), "datagrams")))
        case .answers: return .response(id: id, .answers(try p.lengthPrefixedList("answers")))
        case .watch: return .request(id: id, .watch)
        case .invalidated: return .response(id: id, .invalidated(try p.lengthPrefixedList("invalidated")))
        case .unwatched:
            let length = try need(p.uint16(), "unwatched")
            let path = try need(p.bytes(Int(length)), "unwatched")
            return .response(id: id, .unwatched(path: path, reason: p.restText()))
        case .notice: return .response(id: id, .notice(p.restText()))
        case .incoming:
            let connection = try need(p.uint64(), "incoming")
            return .response(id: id, .incoming(IncomingConnection(id: connection, client: p.rest())))
        case .mirror:
            var events: [MirrorEvent] = []
            while !p.isAtEnd {
                let kind = try need(p.uint8(), "mirror")
                let connection = try need(p.uint64(), "mirror")
                let length = try need(p.uint32(), "mirror")
                let payload = try need(p.bytes(Int(length)), "mirror")
                switch kind {
                case 1: events.append(.opened(connection: connection, client: payload))
                case 2: events.append(.bytes(connection: connection, payload))
                case 3: events.append(.ended(connection: connection, complete: payload.first == 1))
                default: throw .malformed("mirror (an event of kind \(kind))")
                }
            }
            return .response(id: id, .mirror(events))
        case .failure:
            return .response(id: id, .failure(errno: try need(p.int32(), "failure"), message: p.restText()))
        case .done: return .response(id: id, .done)
        case .opened: return .response(id: id, .opened(try need(p.metadata(), "opened")))
        case .metadata: return .response(id: id, .metadata(try need(p.metadata(), "metadata")))
        case .environmentValue: return .response(id: id, .environment(try p.lengthPrefixedList("environment")))
        case .text: return .response(id: id, .text(p.rest()))
        case .chunk: return .chunk(id: id, p.rest())
        case .end: return .end(id: id)
        case .cancel: return .cancel(id: id)
        case .credit: return .credit(id: id, bytes: try need(p.uint32(), "credit"))
        }
    }
}

/// Directory entries travel as a byte stream (`type: UInt8 | length: UInt16 | name`) cut into chunks
/// anywhere, so a directory of any size streams like a file.
public enum DirectoryEntryCodec {
    public static func encode(_ entry: DirectoryEntry, into buffer: inout [UInt8]) {
        let name = entry.name.prefix(Int(UInt16.max))
        buffer.append(entry.type)
        buffer.append(UInt8(name.count >> 8))
        buffer.append(UInt8(name.count & 0xff))
        buffer.append(contentsOf: name)
    }

    /// Decodes a whole stream; a truncated last entry is a violation.
    public static func decode(_ bytes: [UInt8]) throws(ProtocolViolation) -> [DirectoryEntry] {
        var entries: [DirectoryEntry] = []
        var index = 0
        while index < bytes.count {
            guard index + 3 <= bytes.count else { throw .malformed("directory entries") }
            let length = Int(bytes[index + 1]) << 8 | Int(bytes[index + 2])
            guard index + 3 + length <= bytes.count else { throw .malformed("directory entries") }
            entries.append(DirectoryEntry(type: bytes[index], name: Array(bytes[(index + 3)..<(index + 3 + length)])))
            index += 3 + length
        }
        return entries
    }
}

/// Reads big-endian fields; every read returns nil past the end instead of trapping.
struct ByteReader {
    let bytes: UnsafeRawBufferPointer
    var offset = 0

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    var isAtEnd: Bool { offset >= bytes.count }

    mutating func integer<T: FixedWidthInteger>(_: T.Type) -> T? {
        let size = MemoryLayout<T>.size
        guard bytes.count - offset >= size else { return nil }
        var value: T = 0
        for index in 0..<size { value = value << 8 | T(bytes[offset + index]) }
        offset += size
        return value
    }

    mutating func uint8() -> UInt8? { integer(UInt8.self) }
    mutating func uint16() -> UInt16? { integer(UInt16.self) }
    mutating func uint32() -> UInt32? { integer(UInt32.self) }
    mutating func uint64() -> UInt64? { integer(UInt64.self) }
    mutating func int32() -> Int32? { integer(UInt32.self).map { Int32(bitPattern: $0) } }
    mutating func int64() -> Int64? { integer(UInt64.self).map { Int64(bitPattern: $0) } }

    mutating func bytes(_ count: Int) -> [UInt8]? {
        guard count >= 0, bytes.count - offset >= count else { return nil }
        defer { offset += count }
        return Array(bytes[offset..<(offset + count)])
    }

    mutating func rest() -> [UInt8] { bytes(bytes.count - offset) ?? [] }
    mutating func restText() -> String { String(decoding: rest(), as: UTF8.self) }

    /// A UInt16 length and that many bytes of UTF-8.
    mutating func text() -> String? {
        guard let count = uint16(), let bytes = bytes(Int(count)) else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Byte strings, each a UInt32 length and its bytes, to the end.
    mutating func lengthPrefixedList(_ what: String) throws(ProtocolViolation) -> [[UInt8]] {
        var entries: [[UInt8]] = []
        while !isAtEnd {
            guard let count = uint32(), let entry = bytes(Int(count)) else { throw .malformed(what) }
            entries.append(entry)
        }
        return entries
    }

    mutating func time() -> FileMetadata.Time? {
        guard let seconds = int64(), let nanoseconds = uint32() else { return nil }
        return FileMetadata.Time(seconds: seconds, nanoseconds: nanoseconds)
    }

    mutating func metadata() -> FileMetadata? {
        guard let mode = uint32(), let uid = uint32(), let gid = uint32(), let blockSize = uint32(),
            let linkCount = uint64(), let size = uint64(), let device = uint64(), let inode = uint64(),
            let specialDevice = uint64(), let blocks = uint64(), let accessed = time(), let modified = time(),
            let changed = time()
        else { return nil }
        return FileMetadata(
            mode: mode, uid: uid, gid: gid, blockSize: blockSize, linkCount: linkCount, size: size, device: device,
            inode: inode, specialDevice: specialDevice, blocks: blocks, accessed: accessed, modified: modified,
            changed: changed)
    }
}

/// Appends big-endian fields.
struct ByteWriter {
    var buffer: [UInt8]

    mutating func integer<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.bigEndian) { buffer.append(contentsOf: $0) }
    }

    mutating func header(_ code: Frame.TypeCode, _ id: UInt32) {
        buffer.append(code.rawValue)
        integer(id)
    }

    /// A UInt16 length and the UTF-8 bytes (cut at 65535).
    mutating func text(_ text: String) {
        let bytes = text.utf8.prefix(Int(UInt16.max))
        integer(UInt16(bytes.count))
        buffer.append(contentsOf: bytes)
    }

    mutating func lengthPrefixedList(_ entries: [[UInt8]]) {
        for entry in entries {
            integer(UInt32(entry.count))
            buffer.append(contentsOf: entry)
        }
    }

    mutating func time(_ time: FileMetadata.Time) {
        integer(time.seconds)
        integer(time.nanoseconds)
    }

    mutating func metadata(_ m: FileMetadata) {
        for field in [m.mode, m.uid, m.gid, m.blockSize] { integer(field) }
        for field in [m.linkCount, m.size, m.device, m.inode, m.specialDevice, m.blocks] { integer(field) }
        for field in [m.accessed, m.modified, m.changed] { time(field) }
    }

    mutating func encode(_ message: Message) {
        switch message {
        case .hello(let version, let token):
            header(.hello, 0)
            integer(Frame.magic)
            integer(version)
            buffer.append(contentsOf: token)
        case .welcome(let version, let agent):
            header(.welcome, 0)
            integer(version)
            buffer.append(contentsOf: agent.utf8)
        case .refused(let version, let reason):
            header(.refused, 0)
            integer(version)
            buffer.append(contentsOf: reason.utf8)
        case .protocolError(let text):
            header(.protocolError, 0)
            buffer.append(contentsOf: text.utf8)
        case .request(let id, let request):
            encode(request, id: id)
        case .response(let id, let response):
            encode(response, id: id)
        case .chunk(let id, let bytes):
            header(.chunk, id)
            buffer.append(contentsOf: bytes)
        case .end(let id): header(.end, id)
        case .cancel(let id): header(.cancel, id)
        case .credit(let id, let bytes):
            header(.credit, id)
            integer(bytes)
        case .unknown(let type, let id):
            buffer.append(type)
            integer(id)
        }
    }

    mutating func encode(_ request: Request, id: UInt32) {
        switch request {
        case .environment: header(.environment, id)
        case .hostname: header(.hostname, id)
        case .open(let path, let flags, let mode):
            header(.open, id)
            integer(flags)
            integer(mode)
            buffer.append(contentsOf: path)
        case .stat(let path, let follow):
            header(.stat, id)
            buffer.append(follow ? 1 : 0)
            buffer.append(contentsOf: path)
        case .access(let path, let mode):
            header(.access, id)
            integer(mode)
            buffer.append(contentsOf: path)
        case .readlink(let path):
            header(.readlink, id)
            buffer.append(contentsOf: path)
        case .socket(let family, let type, let socketProtocol):
            header(.socket, id)
            for field in [family, type, socketProtocol] { integer(field) }
        case .connectionEvents: header(.connectionEvents, id)
        case .connect(let address):
            header(.connect, id)
            buffer.append(contentsOf: address)
        case .listen(let subscription):
            header(.listen, id)
            integer(subscription.port)
            buffer.append(subscription.mode.rawValue)
            text(subscription.headerPattern)
            text(subscription.pathPattern)
            integer(subscription.family)
            buffer.append(contentsOf: subscription.developer.utf8)
        case .takeIncoming(let connection):
            header(.takeIncoming, id)
            integer(connection)
        case .ping: header(.ping, id)
        case .stolenListener(let port, let family):
            header(.stolenListener, id)
            integer(port)
            integer(family)
        case .resolve(let server, let questions):
            header(.resolve, id)
            buffer.append(UInt8(server.count))
            buffer.append(contentsOf: server)
            for question in questions {
                integer(question.type)
                integer(question.class)
                text(question.name)
            }
        case .datagrams(let family):
            header(.datagrams, id)
            integer(family)
        case .watch: header(.watch, id)
        }
    }

    mutating func encode(_ response: Response, id: UInt32) {
        switch response {
        case .failure(let errno, let message):
            header(.failure, id)
            integer(errno)
            buffer.append(contentsOf: message.utf8)
        case .done: header(.done, id)
        case .opened(let metadata):
            header(.opened, id)
            self.metadata(metadata)
        case .metadata(let metadata):
            header(.metadata, id)
            self.metadata(metadata)
        case .environment(let entries):
            header(.environmentValue, id)
            lengthPrefixedList(entries)
        case .answers(let messages):
            header(.answers, id)
            lengthPrefixedList(messages)
        case .invalidated(let paths):
            header(.invalidated, id)
            lengthPrefixedList(paths)
        case .unwatched(let path, let reason):
            header(.unwatched, id)
            integer(UInt16(min(path.count, Int(UInt16.max))))
            buffer.append(contentsOf: path.prefix(Int(UInt16.max)))
            buffer.append(contentsOf: reason.utf8)
        case .text(let bytes):
            header(.text, id)
            buffer.append(contentsOf: bytes)
        case .notice(let text):
            header(.notice, id)
            buffer.append(contentsOf: text.utf8)
        case .incoming(let connection):
            header(.incoming, id)
            integer(connection.id)
            buffer.append(contentsOf: connection.client)
        case .mirror(let events):
            header(.mirror, id)
            for event in events {
                let (kind, connection, payload): (UInt8, UInt64, [UInt8]) =
                    switch event {
                    case .opened(let connection, let client): (1, connection, client)
                    case .bytes(let connection, let bytes): (2, connection, bytes)
                    case .ended(let connection, let complete): (3, connection, [complete ? 1 : 0])
                    }
                buffer.append(kind)
                integer(connection)
                integer(UInt32(payload.count))
                buffer.append(contentsOf: payload)
            }
        }
    }
}
