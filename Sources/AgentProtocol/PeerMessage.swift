/// One session's steal of a pod port, as the agents of one pod tell each other (docs/incoming.md, "Sharing
/// a port"): sessions that steal by filter share a port, and a steal of every request takes it alone.
public struct PortClaim: Sendable, Hashable {
    /// Which session: the agent's name (unique in the pod) and its session number there.
    public struct Owner: Sendable, Hashable, CustomStringConvertible {
        public var agent: String
        public var session: UInt32

        public init(agent: String, session: UInt32) {
            self.agent = agent
            self.session = session
        }

        public var description: String { "session \(session) of agent \(agent)" }
    }

    public var owner: Owner
    public var port: UInt16
    /// CLOCK_MONOTONIC in nanoseconds when the claim was made, one clock for every container of a pod (one
    /// kernel): of two claims whose filters match one request, the earlier gets it.
    public var registeredAt: UInt64
    /// `--steal-header` and `--steal-path`; both empty: every request.
    public var headerPattern: String
    public var pathPattern: String
    /// `user@machine`, as the session's client named it.
    public var developer: String
    /// The session's netfilter table, which redirects the port to its agent.
    public var table: String

    public init(
        owner: Owner, port: UInt16, registeredAt: UInt64, headerPattern: String, pathPattern: String,
        developer: String, table: String
    ) {
        self.owner = owner
        self.port = port
        self.registeredAt = registeredAt
        self.headerPattern = headerPattern
        self.pathPattern = pathPattern
        self.developer = developer
        self.table = table
    }

    /// Whether the claim takes matching requests only, rather than every connection.
    public var isFiltered: Bool { !(headerPattern.isEmpty && pathPattern.isEmpty) }
}

/// What the agents of one pod say to each other, on unix sockets of the pod's network namespace (the one
/// thing their containers share). Framed as `length: UInt32 | type: UInt8 | payload`, big-endian.
public enum PeerMessage: Sendable, Equatable {
    /// First on a connection between two agents, both ways: the sender's name.
    case hello(agent: String)
    /// Asks for the receiver's claims of `port`, answered with `claims`.
    case query(port: UInt16)
    /// All the sender's own claims of `port` now (replacing what it said of the port before): the answer to
    /// `query`, and told every peer whenever they change.
    case claims(port: UInt16, [PortClaim])
    /// To the agent of `owner`: a request that matched its filter went to a claim made earlier, as `note` says.
    case missed(owner: PortClaim.Owner, port: UInt16, note: String)
    /// First and only frame of a delivery connection: the rest of it is the requests of a stolen connection
    /// (from `client`, a sockaddr_in or sockaddr_in6) that the receiver's session `session` claims, and
    /// their answers.
    case deliver(session: UInt32, port: UInt16, client: [UInt8])
    /// A connection for the receiver's session `session` waits on its hand-over socket (`StolenAccepts`): the
    /// doorbell, on a connection that carries nothing else, for the session's loop to take the connection.
    case handedOver(session: UInt32)
}

extension PeerMessage {
    enum TypeCode: UInt8 {
        case hello = 1, query = 2, claims = 3, missed = 4, deliver = 5, handedOver = 6
    }

    /// The result of looking at the start of a byte stream.
    public enum Parsed: Sendable, Equatable {
        case incomplete
        case message(PeerMessage, consumed: Int)
    }

    /// The largest frame: a few claims, or a note.
    static let maximumLength = 1 << 16

    public var encoded: [UInt8] {
        var writer = ByteWriter(buffer: [0, 0, 0, 0])
        switch self {
        case .hello(let agent):
            writer.buffer.append(TypeCode.hello.rawValue)
            writer.text(agent)
        case .query(let port):
            writer.buffer.append(TypeCode.query.rawValue)
            writer.integer(port)
        case .claims(let port, let claims):
            writer.buffer.append(TypeCode.claims.rawValue)
            writer.integer(port)
            for claim in claims {
                writer.text(claim.owner.agent)
                writer.integer(claim.owner.session)
                writer.integer(claim.registeredAt)
                for text in [claim.headerPattern, claim.pathPattern, claim.developer, claim.table] { writer.text(text) }
            }
        case .missed(let owner, let port, let note):
            writer.buffer.append(TypeCode.missed.rawValue)
            writer.text(owner.agent)
            writer.integer(owner.session)
            writer.integer(port)
            writer.text(note)
        case .deliver(let session, let port, let client):
            writer.buffer.append(TypeCode.deliver.rawValue)
            writer.integer(session)
            writer.integer(port)
            writer.buffer.append(contentsOf: client)
        case .handedOver(let session):
            writer.buffer.append(TypeCode.handedOver.rawValue)
            writer.integer(session)
        }
        let length = UInt32(writer.buffer.count - 4)
        withUnsafeBytes(of: length.bigEndian) { raw in
            for index in 0..<4 { writer.buffer[index] = raw[index] }
        }
        return writer.buffer
    }

    /// Parses the first frame of `bytes`; never reads beyond them and never traps.
    public static func parse(_ bytes: UnsafeRawBufferPointer) throws(ProtocolViolation) -> Parsed {
        guard bytes.count >= 4 else { return .incomplete }
        var reader = ByteReader(bytes)
        let length = reader.uint32()!
        guard length >= 1, length <= maximumLength else { throw .badLength(length) }
        guard bytes.count >= 4 + Int(length) else { return .incomplete }
        var p = ByteReader(UnsafeRawBufferPointer(rebasing: bytes[5..<(4 + Int(length))]))
        func need<T>(_ value: T?, _ what: String) throws(ProtocolViolation) -> T {
            guard let value else { throw .malformed("peer \(what)") }
            return value
        }
        let message: PeerMessage
        switch TypeCode(rawValue: bytes[4]) {
        case .hello?: message = .hello(agent: try need(p.text(), "hello"))
        case .query?: message = .query(port: try need(p.uint16(), "query"))
        case .claims?:
            let port = try need(p.uint16(), "claims")
            var claims: [PortClaim] = []
            while !p.isAtEnd {
                let agent = try need(p.text(), "claim")
                let session = try need(p.uint32(), "claim")
                let registeredAt = try need(p.uint64(), "claim")
                let texts = try (0..<4).map { _ throws(ProtocolViolation) in try need(p.text(), "claim") }
                claims.append(
                    PortClaim(
                        owner: .init(agent: agent, session: session), port: port, registeredAt: registeredAt,
                        headerPattern: texts[0], pathPattern: texts[1], developer: texts[2], table: texts[3]))
            }
            message = .claims(port: port, claims)
        case .missed?:
            let agent = try need(p.text(), "missed")
            let session = try need(p.uint32(), "missed")
            let port = try need(p.uint16(), "missed")
            message = .missed(
                owner: .init(agent: agent, session: session), port: port, note: try need(p.text(), "missed"))
        case .deliver?:
            let session = try need(p.uint32(), "deliver")
            message = .deliver(session: session, port: try need(p.uint16(), "deliver"), client: p.rest())
        case .handedOver?: message = .handedOver(session: try need(p.uint32(), "handedOver"))
        case nil:
            throw .malformed("peer message of type \(bytes[4])")
        }
        return .message(message, consumed: 4 + Int(length))
    }

    /// Convenience for tests.
    public static func parse(_ bytes: [UInt8]) throws(ProtocolViolation) -> Parsed {
        let result = bytes.withUnsafeBytes { raw in Result { () throws(ProtocolViolation) in try parse(raw) } }
        return try result.get()
    }
}
