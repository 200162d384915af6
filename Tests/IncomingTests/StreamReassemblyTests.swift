import Testing

@testable import Incoming

/// An IPv4 packet carrying a TCP segment, as the NFLOG copy hands it over.
func ipv4Packet(
    from source: [UInt8] = [10, 250, 0, 2], port sourcePort: UInt16 = 40000, to destination: [UInt8] = [10, 250, 0, 1],
    port destinationPort: UInt16 = 8080, sequence: UInt32, flags: UInt8, payload: [UInt8] = []
) -> [UInt8] {
    func be16(_ value: UInt16) -> [UInt8] { [UInt8(value >> 8), UInt8(value & 0xff)] }
    let total = 20 + 20 + payload.count
    let ip: [UInt8] = [0x45, 0] + be16(UInt16(total)) + [0, 1, 0x40, 0, 64, 6, 0, 0] + source + destination
    let tcp: [UInt8] =
        be16(sourcePort) + be16(destinationPort) + withUnsafeBytes(of: sequence.bigEndian) { Array($0) }
        + [0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]
    return ip + tcp + payload
}

@Test func parsesIPv4AndIPv6Segments() throws {
    let segment = try #require(
        TCPSegment.parse(ipPacket: ipv4Packet(sequence: 7, flags: TCPSegment.ack, payload: Array("GET".utf8))[...]))
    #expect(segment.source == Endpoint(address: [10, 250, 0, 2], port: 40000))
    #expect(segment.destination.port == 8080)
    #expect(segment.sequence == 7 && segment.payload == Array("GET".utf8) && !segment.has(TCPSegment.syn))
    #expect(segment.source.description == "10.250.0.2:40000")
    #expect(segment.source.socketAddress == [2, 0, 0x9c, 0x40, 10, 250, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0])

    var v6 = [UInt8](repeating: 0, count: 40)
    v6[0] = 0x60
    v6[5] = 20  // payload length: the TCP header
    v6[6] = 6
    v6[23] = 1  // ::1 → ::2
    v6[39] = 2
    let tcp = Array(ipv4Packet(sequence: 1, flags: TCPSegment.syn)[20...])
    let parsed = try #require(TCPSegment.parse(ipPacket: (v6 + tcp)[...]))
    #expect(parsed.source.address.count == 16 && parsed.has(TCPSegment.syn))
    #expect(parsed.destination.description == "[0:0:0:0:0:0:0:2]:8080")

    // Not TCP, a fragment, and a truncated header are skipped.
    var udp = ipv4Packet(sequence: 0, flags: 0)
    udp[9] = 17
    #expect(TCPSegment.parse(ipPacket: udp[...]) == nil)
    var fragment = ipv4Packet(sequence: 0, flags: 0)
    fragment[6] = 0x20
    #expect(TCPSegment.parse(ipPacket: fragment[...]) == nil)
    #expect(TCPSegment.parse(ipPacket: ipv4Packet(sequence: 0, flags: 0)[..<30]) == nil)
}

@Test func reassemblesOutOfOrderRetransmittedAndOverlappingSegments() {
    var stream = StreamReassembly(initialSequence: 999)  // data starts at 1000
    #expect(stream.receive(sequence: 1005, payload: Array("world".utf8), fin: false).bytes.isEmpty)
    let first = stream.receive(sequence: 1000, payload: Array("hello".utf8), fin: false)
    #expect(String(decoding: first.bytes, as: UTF8.self) == "helloworld")
    #expect(stream.receive(sequence: 1000, payload: Array("hello".utf8), fin: false).bytes.isEmpty)  // again
    let overlap = stream.receive(sequence: 1008, payload: Array("ld!".utf8), fin: true)
    #expect(String(decoding: overlap.bytes, as: UTF8.self) == "!")
    #expect(overlap.finished)
}

@Test func sequenceNumbersWrapAround() {
    var stream = StreamReassembly(initialSequence: UInt32.max - 2)
    let step = stream.receive(sequence: UInt32.max - 1, payload: [1, 2, 3, 4], fin: false)
    #expect(step.bytes == [1, 2, 3, 4])
    #expect(stream.next == 2)
    #expect(stream.receive(sequence: 2, payload: [5], fin: true).finished)
}

@Test func aGapThatHoldsTooMuchIsGivenUp() {
    var stream = StreamReassembly(initialSequence: 0, limit: 8)
    #expect(!stream.receive(sequence: 10, payload: [UInt8](repeating: 1, count: 8), fin: false).lost)
    #expect(stream.receive(sequence: 20, payload: [1], fin: false).lost)
}

@Test func followsConnectionsFromTheirSYNOnly() {
    var flows = MirrorFlows()
    let client = Endpoint(address: [10, 250, 0, 2], port: 40000)
    func segment(_ sequence: UInt32, _ flags: UInt8, _ payload: String = "", from port: UInt16 = 40000) -> TCPSegment {
        TCPSegment.parse(
            ipPacket: ipv4Packet(port: port, sequence: sequence, flags: flags, payload: Array(payload.utf8))[...])!
    }
    // A connection open before the copy began: not followed.
    #expect(flows.receive(segment(500, TCPSegment.ack, "old", from: 39999), now: 0).isEmpty)
    let key = MirrorFlows.Key(client: client, server: Endpoint(address: [10, 250, 0, 1], port: 8080))
    #expect(flows.receive(segment(100, TCPSegment.syn), now: 0) == [.opened(key)])
    #expect(flows.receive(segment(100, TCPSegment.syn), now: 0).isEmpty)  // a retransmitted SYN
    #expect(flows.receive(segment(101, TCPSegment.ack, "GET / HTTP/1.1\r\n"), now: 1) == [.data(key, Array("GET / HTTP/1.1\r\n".utf8))])
    #expect(flows.receive(segment(117, TCPSegment.ack | TCPSegment.fin), now: 2) == [.closed(key)])
    #expect(flows.count == 0)

    #expect(flows.receive(segment(200, TCPSegment.syn), now: 3) == [.opened(key)])
    #expect(flows.receive(segment(201, TCPSegment.rst), now: 3) == [.closed(key)])
    #expect(flows.receive(segment(300, TCPSegment.syn), now: 3) == [.opened(key)])
    #expect(flows.expire(before: 4) == [.closed(key)])
    #expect(flows.receive(segment(400, TCPSegment.syn), now: 5) == [.opened(key)])
    #expect(flows.loseAll() == [.lost(key)])
}

@Test func findsThePacketsInNetlinkLogMessages() {
    func le16(_ value: Int) -> [UInt8] { [UInt8(value & 0xff), UInt8(value >> 8)] }
    func attribute(_ type: Int, _ value: [UInt8]) -> [UInt8] {
        let bytes = le16(4 + value.count) + le16(type) + value
        return bytes + [UInt8](repeating: 0, count: (4 - bytes.count % 4) % 4)
    }
    func message(type: Int, _ attributes: [UInt8]) -> [UInt8] {
        let length = 16 + 4 + attributes.count
        return le16(length) + [0, 0] + le16(type) + [0, 0] + [UInt8](repeating: 0, count: 8) + [2, 0, 0, 0]
            + attributes
    }
    let packet = ipv4Packet(sequence: 1, flags: TCPSegment.syn, payload: [1, 2, 3])
    let datagram =
        message(type: 0x0400, attribute(1, [0, 0, 0, 0]) + attribute(9, packet))
        + message(type: 2, [])  // an error message
        + message(type: 0x0400, attribute(1, [0, 0, 0, 0]))  // no payload
        + message(type: 0x0400, attribute(9, [0x45]))
    let packets = NetlinkLog.packets(in: datagram[...])
    #expect(packets.map(Array.init) == [packet, [0x45]])
    #expect(NetlinkLog.packets(in: datagram.prefix(10)).isEmpty)
    #expect(NetlinkLog.packets(in: ([0xff, 0xff, 0, 0] + datagram)[...]).isEmpty)  // a length past the end
    #expect(NetlinkLog.packets(in: (datagram + datagram)[datagram.count...]).map(Array.init) == [packet, [0x45]])
}
