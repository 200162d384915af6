import Testing

@testable import AgentProtocol

/// What agents of one pod say to each other: every message survives its frame, and bad bytes are
/// violations, never a trap.
struct PeerMessageTests {
    static let claim = PortClaim(
        owner: .init(agent: "5f3a09c1", session: 7), port: 8080, registeredAt: 123_456_789_000,
        headerPattern: "^X-Dev: ä$", pathPattern: "", developer: "alice@laptop-a", table: "sysmirror_5f3a09c1_7")

    static let everyMessage: [PeerMessage] = [
        .hello(agent: "5f3a09c1"),
        .query(port: 8080),
        .claims(port: 8080, []),
        .claims(
            port: 8080,
            [
                claim,
                PortClaim(
                    owner: .init(agent: "0000beef", session: 1), port: 8080, registeredAt: .max, headerPattern: "",
                    pathPattern: "^/api/", developer: "bob@b", table: "sysmirror_0000beef_1"),
            ]),
        .missed(owner: claim.owner, port: 8080, note: "GET /cart from 10.1.2.3:5000 went to bob@b's session"),
        .deliver(session: 7, port: 65535, client: [2, 0, 0x13, 0x88, 10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0]),
        .handedOver(session: 7),
    ]

    @Test func everyMessageRoundTrips() throws {
        for message in Self.everyMessage {
            let bytes = message.encoded
            #expect(try PeerMessage.parse(bytes) == .message(message, consumed: bytes.count))
            for cut in 0..<bytes.count { #expect(try PeerMessage.parse(Array(bytes[..<cut])) == .incomplete) }
        }
    }

    @Test func aDeliveryLeavesTheBytesAfterItsFrame() throws {
        let frame = PeerMessage.deliver(session: 1, port: 80, client: []).encoded
        #expect(
            try PeerMessage.parse(frame + Array("GET / HTTP/1.1\r\n".utf8))
                == .message(.deliver(session: 1, port: 80, client: []), consumed: frame.count))
    }

    @Test func badFramesAreViolations() {
        #expect(throws: ProtocolViolation.badLength(0)) { try PeerMessage.parse([0, 0, 0, 0]) }
        #expect(throws: ProtocolViolation.self) { try PeerMessage.parse([0, 0, 0, 1, 99]) }
        #expect(throws: ProtocolViolation.self) { try PeerMessage.parse([0, 0, 0, 2, 2, 1]) }  // a query cut short
        // A claim cut in its middle.
        let claims = PeerMessage.claims(port: 1, [Self.claim]).encoded
        var cut = Array(claims.dropLast(3))
        cut[3] -= 3
        #expect(throws: ProtocolViolation.self) { try PeerMessage.parse(cut) }
    }
}
