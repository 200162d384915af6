import NameResolution
import Testing

@testable import AgentProtocol

let sampleMetadata = FileMetadata(
    mode: 0o100644, uid: 1000, gid: 1000, blockSize: 4096, linkCount: 1, size: 12, device: 0x803, inode: 42,
    specialDevice: 0, blocks: 8, accessed: .init(seconds: 1_700_000_000, nanoseconds: 5),
    modified: .init(seconds: -1, nanoseconds: 999_999_999), changed: .init(seconds: 0, nanoseconds: 0))

/// One of every message, with awkward values.
let everyMessage: [Message] = [
    .hello(version: protocolVersion, token: Array("s3cret\n".utf8)),
    .welcome(version: 1, agent: "sysmirror agent, target pid 7"),
    .refused(version: 1, reason: "wrong token"),
    .protocolError("garbled"),
    .request(id: 1, .environment),
    .request(id: 2, .hostname),
    .request(id: 3, .open(path: Array("/etc/ünï".utf8), flags: -2_147_483_648, mode: 0o644)),
    .request(id: 4, .stat(path: [], followSymlinks: true)),
    .request(id: 5, .stat(path: Array("/a".utf8), followSymlinks: false)),
    .request(id: 6, .access(path: Array("/x".utf8), mode: 7)),
    .request(id: 7, .readlink(path: Array("/l".utf8))),
    .request(id: 18, .socket(family: 10, type: 0o2004002, protocol: 0)),
    .request(id: 19, .connectionEvents),
    .request(id: 1, .connect(address: [2, 0, 0x1f, 0x90, 10, 96, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0])),
    .request(id: 20, .listen(IncomingSubscription(port: 8080, mode: .mirror))),
    .request(
        id: 21,
        .listen(
            IncomingSubscription(
                port: 65535, mode: .steal, headerPattern: "^X-Dev: ä$", pathPattern: "^/api/", family: 2,
                developer: "alice@laptop-a"))),
    .request(id: 1, .takeIncoming(connection: .max)),
    .request(id: 2, .stolenListener(port: 8080, family: 10)),
    .request(id: 22, .ping),
    .request(
        id: 23,
        .resolve(
            server: [2, 0, 0, 53, 10, 96, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0],
            questions: [
                DNSQuestion(name: "web.default.svc.cluster.local", type: 28),
                DNSQuestion(name: "x", type: 33, class: 3),
            ])),
    .request(id: 24, .resolve(server: [], questions: [])),
    .request(id: 25, .datagrams(family: 10)),
    .request(id: 26, .watch),
    .response(id: 26, .invalidated([Array("/etc/config/app.yaml".utf8), [0xff, 0], []])),
    .response(id: 26, .unwatched(path: [0x2f, 0xfe], reason: "the inotify watch limit (fs.inotify.max_user_watches)")),
    .response(id: 27, .notice("GET /cart from 10.1.2.3:5000 matched your filter and went to bob@laptop-b's session")),
    .response(id: 23, .answers([[1, 2, 3], [], Array(repeating: 7, count: 700)])),
    .response(id: 23, .answers([])),
    .response(id: 20, .incoming(IncomingConnection(id: 7, client: [2, 0, 0xa4, 0x10, 10, 250, 0, 2]))),
    .response(
        id: 20,
        .mirror([
            .opened(connection: 7, client: [2, 0, 0xa4, 0x10, 10, 250, 0, 2]),
            .bytes(connection: 7, Array("GET / HTTP/1.1\r\n".utf8)), .bytes(connection: .max, []),
            .ended(connection: 7, complete: true), .ended(connection: 8, complete: false),
        ])),
    .response(id: 20, .mirror([])),
    .response(id: 8, .failure(errno: 2, message: "")),
    .response(id: 9, .done),
    .response(id: 10, .opened(sampleMetadata)),
    .response(id: 11, .metadata(sampleMetadata)),
    .response(id: .max, .environment([Array("A=1".utf8), [], Array("B==".utf8)])),
    .response(id: 12, .text(Array("pod-7".utf8))),
    .chunk(id: 13, [UInt8](repeating: 0xAB, count: Frame.chunkSize)),
    .chunk(id: 14, []),
    .end(id: 15),
    .cancel(id: 16),
    .credit(id: 17, bytes: 128 << 10),
    .unknown(type: 0x7E, id: 17),
]

@Test func everyMessageRoundTrips() throws {
    for message in everyMessage {
        let bytes = Frame.encode(message)
        #expect(try Frame.parse(bytes) == .message(message, consumed: bytes.count))
    }
}

@Test func framesParseOneAtATimeFromAStream() throws {
    var stream: [UInt8] = []
    for message in everyMessage { Frame.encode(message, into: &stream) }
    var parsed: [Message] = []
    var offset = 0
    while offset < stream.count {
        guard case .message(let message, let consumed) = try Frame.parse(Array(stream[offset...])) else {
            Issue.record("incomplete at \(offset)")
            return
        }
        parsed.append(message)
        offset += consumed
    }
    #expect(parsed == everyMessage)
}

@Test func everyPrefixOfAFrameIsIncomplete() throws {
    let bytes = Frame.encode(.request(id: 3, .open(path: Array("/etc/hosts".utf8), flags: 0, mode: 0)))
    for end in 0..<bytes.count {
        #expect(try Frame.parse(Array(bytes[..<end])) == .incomplete)
    }
}

@Test func lengthsOutsideTheLimitsAreViolations() {
    #expect(throws: ProtocolViolation.badLength(0)) { try Frame.parse([0, 0, 0, 0, 1]) }
    #expect(throws: ProtocolViolation.badLength(4)) { try Frame.parse([0, 0, 0, 4, 1, 0, 0, 0]) }
    #expect(throws: ProtocolViolation.badLength(0xFFFF_FFFF)) { try Frame.parse([0xFF, 0xFF, 0xFF, 0xFF]) }
    // HTTP sent to the agent's port is refused on its first four bytes.
    #expect(throws: ProtocolViolation.self) { try Frame.parse(Array("GET / HTTP/1.1\r\n\r\n".utf8)) }
}

@Test func truncatedPayloadsOfKnownTypesAreMalformed() {
    let cut: [Message] = [
        .hello(version: 1, token: []), .request(id: 1, .open(path: [], flags: 0, mode: 0)),
        .response(id: 1, .metadata(sampleMetadata)), .response(id: 1, .failure(errno: 1, message: "")),
        .response(id: 1, .mirror([.bytes(connection: 1, [1, 2, 3])])),
    ]
    for message in cut {
        var bytes = Frame.encode(message)
        bytes.removeLast()
        let length = UInt32(bytes.count - 4)
        bytes.replaceSubrange(0..<4, with: withUnsafeBytes(of: length.bigEndian, Array.init))
        #expect(throws: ProtocolViolation.self) { try Frame.parse(bytes) }
    }
}

@Test func aMirrorEventOfAnUnknownKindIsMalformed() {
    var bytes = Frame.encode(.response(id: 3, .mirror([.ended(connection: 9, complete: true)])))
    bytes[Frame.headerLength + 4] = 7  // the event's kind, after the length and the header
    #expect(throws: ProtocolViolation.malformed("mirror (an event of kind 7)")) { try Frame.parse(bytes) }
}

@Test func helloFromAnotherProtocolIsMalformed() {
    var bytes = Frame.encode(.hello(version: 1, token: []))
    bytes[9] ^= 0xFF  // first byte of the magic
    #expect(throws: ProtocolViolation.malformed("hello (not a sysmirror client)")) { try Frame.parse(bytes) }
}

@Test func directoryEntriesRoundTripAcrossAnyCut() throws {
    let entries = [
        DirectoryEntry(type: DirectoryEntry.regular, name: Array("config.yaml".utf8)),
        DirectoryEntry(type: DirectoryEntry.directory, name: Array("..data".utf8)),
        DirectoryEntry(type: DirectoryEntry.symbolicLink, name: Array(repeating: 0x61, count: 255)),
    ]
    var bytes: [UInt8] = []
    for entry in entries { DirectoryEntryCodec.encode(entry, into: &bytes) }
    #expect(try DirectoryEntryCodec.decode(bytes) == entries)
    #expect(throws: ProtocolViolation.self) { try DirectoryEntryCodec.decode(Array(bytes.dropLast())) }
}

@Test func opensAreClassifiedByTheirFlags() {
    let (rdonly, wronly, rdwr): (Int32, Int32, Int32) = (0, 1, 2)
    let (create, truncate, append, cloexec): (Int32, Int32, Int32, Int32) = (0o100, 0o1000, 0o2000, 0o2000000)
    #expect(OpenIntent(flags: rdonly | cloexec) == .read)
    #expect(OpenIntent(flags: rdonly | create) == .readWrite)
    #expect(OpenIntent(flags: wronly | create | truncate) == .stream)
    #expect(OpenIntent(flags: wronly | create | append) == .stream)
    #expect(OpenIntent(flags: wronly | create) == .readWrite)
    #expect(OpenIntent(flags: rdwr) == .readWrite)
    #expect(OpenIntent(flags: rdwr | truncate | create) == .readWrite)
    #expect(!OpenIntent.writesBack(rdonly | create))
    #expect(OpenIntent.writesBack(wronly) && OpenIntent.writesBack(rdwr))
}

@Suite struct DatagramTests {
    @Test func aDatagramRoundTripsThroughAChunk() {
        let datagram = Datagram(
            address: [2, 0, 0, 7, 10, 96, 0, 40, 0, 0, 0, 0, 0, 0, 0, 0], payload: Array("ping".utf8))
        #expect(Datagram(chunk: datagram.encoded) == datagram)
        #expect(Datagram(chunk: [16, 2, 0]) == nil)
        #expect(Datagram(chunk: []) == nil)
    }
}

/// What a resumed link may ask again: reads, never what changes the pod or opens something in the agent.
@Test func onlyRequestsThatChangeNothingAreRepeatable() {
    let repeatable: [Request] = [
        .environment, .hostname, .stat(path: [], followSymlinks: true), .access(path: [], mode: 4),
        .readlink(path: []), .resolve(server: [], questions: []), .ping, .open(path: [], flags: 0, mode: 0),
    ]
    let once: [Request] = [
        .open(path: [], flags: 0o1101, mode: 0o644), .open(path: [], flags: 0o2, mode: 0),
        .connect(address: []), .listen(IncomingSubscription(port: 80, mode: .steal)), .takeIncoming(connection: 1),
        .datagrams(family: 2), .watch, .socket(family: 2, type: 1, protocol: 0), .connectionEvents,
        .stolenListener(port: 80, family: 2),
    ]
    #expect(repeatable.allSatisfy { $0.isRepeatable })
    #expect(!once.contains { $0.isRepeatable })
}
