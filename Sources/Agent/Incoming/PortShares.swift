import AgentProtocol
import Incoming
import Logging
import NIOCore
import NIOPosix
import Synchronization
import SyscallDecoding

import struct LinuxSystem.OwnedDescriptor
import class LinuxSystem.SharedDescriptor
import enum LinuxSystem.Sockets
import struct LinuxSystem.SystemCallError
import func LinuxSystem.readFile

#if canImport(Glibc)
    import Glibc
#endif

/// The pod's stolen ports as every agent in the pod claims them, so that sessions stealing by filter share a
/// port (docs/incoming.md, "Sharing a port"). Agents find each other by their beacons: listening abstract
/// unix sockets named `sysmirror-agent-NAME`, which live in the pod's network namespace (the one thing the
/// agents' containers share, and where their nft tables are) and vanish with their agent.
///
/// Every session that steals a port claims it here first, under a lock the pod's agents share (an abstract
/// socket bound while a claim is decided): it asks every other agent for its claims of the port, and is
/// refused when a claim is in the way (`PortSharing.refusal`). Each claim has its own nft table, redirecting
/// the port to its own agent; the kernel applies one such redirect (of chains at one priority, the one made
/// last), so whichever agent gets a connection routes its requests by every claim of the port, in the order
/// made: to its own sessions; a connection whose first request is another agent's goes to that agent whole
/// (`StolenAccepts`), and a later request of another agent's on a delivery connection to it. When a session
/// ends, its table goes first and then its claim; when an agent dies, its peers see their connection to it
/// end and remove its tables.
final class PortShares: Sendable {
    static let beaconPrefix = "sysmirror-agent-"
    /// How long a claim waits for another agent's answer, or for another agent's claim to be decided.
    static let answerTimeout = TimeAmount.seconds(2)

    /// This agent's name in the pod (and in its tables' names): random, as pids repeat across containers.
    let agent = String(UInt32.random(in: .min ... .max), radix: 16).leftPadded(to: 8)
    let netfilter: Netfilter?
    let pool: NIOThreadPool
    let logger: Logger
    private let state = Mutex(State())

    /// A claim of one of this agent's sessions.
    struct Own {
        let claim: PortClaim
        let session: IncomingSession
    }

    /// A claim in the order a port's requests are offered, with its filter.
    struct Entry: Sendable {
        let claim: PortClaim
        let filter: HTTPFilter?
    }

    private struct State {
        var beacon: SharedDescriptor?
        var accepts: StolenAccepts?
        var loop: (any EventLoop)?
        /// The other agents, by name, each on one connection.
        var peers: [String: any Channel] = [:]
        var own: [Own] = []
        /// The other agents' claims, by agent and port.
        var theirs: [String: [UInt16: [PortClaim]]] = [:]
        /// Claims in order, by port, as requests are routed.
        var entries: [UInt16: [Entry]] = [:]
        /// `query`s waiting for their answer, by agent and port.
        var queries: [String: [UInt16: EventLoopPromise<Void>]] = [:]

        func ownClaims(of port: UInt16) -> [PortClaim] { own.map(\.claim).filter { $0.port == port } }
    }

    init(netfilter: Netfilter?, pool: NIOThreadPool, logger: Logger) {
        self.netfilter = netfilter
        self.pool = pool
        self.logger = logger
    }

    // MARK: Claims (from the thread pool: they wait for the other agents)

    /// Puts up the agent's beacon, once; the first session that takes a port does.
    func start(on loop: any EventLoop) throws {
        try state.withLock { state in
            guard state.beacon == nil else { return }
            let accepts = try StolenAccepts(agent: agent) { [self] message, read, connection in
                guard case .deliver(let number, let port, let client) = message,
                    let client = Endpoint(socketAddress: client)
                else { return }
                guard let session = session(number) else { return }  // the connection closes here
                session.split(connection, podPort: port, client: client, read: read)
            }
            let beacon = SharedDescriptor(try Self.streamSocket())
            try Sockets.bind(beacon.raw, to: .abstract(Self.beaconPrefix + agent))
            try Sockets.listen(beacon.raw, backlog: 128)
            // Accepted where the peer's user can be checked first (`isAgent`): any process of the pod's
            // network namespace can reach the beacon. A session's doorbell goes on the session's loop.
            _ = accepts.watchReadingFirst(beacon, admitting: Self.isAgent) { [self] connection, first in
                var peerLoop = loop
                if case .message(.handedOver(let number), _)? = try? PeerMessage.parse(first),
                    let session = session(number)
                {
                    peerLoop = session.loop
                }
                _ = peerChannel(connection, name: nil, read: first, on: peerLoop)
            }
            state.beacon = beacon
            state.accepts = accepts
            state.loop = loop
        }
    }

    /// Whether the process at the other end of a unix socket may be an agent of the pod: it runs as root or
    /// as this agent's user. The pod's own processes (as a rule another user) are not heard, so that they
    /// cannot make a claim that takes the pod's requests.
    static func isAgent(_ socket: Int32) -> Bool {
        (try? Sockets.peerUser(socket)).map(isAgent(user:)) ?? false
    }

    static func isAgent(user: UInt32) -> Bool { user == 0 || user == geteuid() }

    /// Where the agent accepts the connections of ports stolen by filter (once `start` ran).
    var accepts: StolenAccepts? { state.withLock { $0.accepts } }

    /// The names of the pod's agents that are running (their beacons are up), this one included.
    func runningAgents() -> Set<String> {
        let listing = (try? readFile("/proc/net/unix")).map { String(decoding: $0, as: UTF8.self) } ?? ""
        let names = PortSharing.listeningAbstractNames(inProcNetUnix: listing, prefix: Self.beaconPrefix)
        return Set(names.map { String($0.dropFirst(Self.beaconPrefix.count)) }).union([agent])
    }

    /// What came of a claim.
    enum Claimed {
        /// The port is the session's, after this many claims made before.
        case after(Int)
        case refused(String)
    }

    /// Claims `claim.port` for `session`, unless a claim in the pod is in the way.
    func claim(_ claim: PortClaim, by session: IncomingSession) -> Claimed {
        let lock: OwnedDescriptor
        do {
            lock = try lockPort(claim.port)
        } catch {
            return .refused("could not agree on port \(claim.port) with the pod's other agents: \(error)")
        }
        // Held until the claim is known to every agent that asks.
        let claimed = decide(claim, by: session)
        lock.close()
        return claimed
    }

    private func decide(_ claim: PortClaim, by session: IncomingSession) -> Claimed {
        let others = claims(of: claim.port)
        if let refusal = PortSharing.refusal(of: claim, beside: others) { return .refused(refusal) }
        let peers = state.withLock { state in
            state.own.append(Own(claim: claim, session: session))
            reorder(claim.port, &state)
            return Array(state.peers.values)
        }
        tell(peers, .claims(port: claim.port, ownClaims(of: claim.port)))
        return .after(others.count)
    }

    /// `owner` no longer steals `port` (its table is gone already): the other agents hear it.
    func release(_ port: UInt16, by owner: PortClaim.Owner) {
        let peers = state.withLock { state -> [any Channel]? in
            guard state.own.contains(where: { $0.claim.owner == owner && $0.claim.port == port }) else { return nil }
            state.own.removeAll { $0.claim.owner == owner && $0.claim.port == port }
            reorder(port, &state)
            return Array(state.peers.values)
        }
        if let peers { tell(peers, .claims(port: port, ownClaims(of: port))) }
    }

    /// Every claim of `port` in the pod now: this agent's, and each running agent's answer.
    private func claims(of port: UInt16) -> [PortClaim] {
        var answers: [EventLoopFuture<Void>] = []
        for name in runningAgents().subtracting([agent]).sorted() {
            guard let peer = peer(named: name) else { continue }
            let answered = peer.eventLoop.makePromise(of: Void.self)
            state.withLock { state in state.queries[name, default: [:]][port] = answered }
            peer.eventLoop.scheduleTask(in: Self.answerTimeout) { [self] in
                answerQuery(from: name, port: port)?.fail(IncomingError("no answer"))
            }
            peer.writeAndFlush(ByteBuffer(bytes: PeerMessage.query(port: port).encoded), promise: nil)
            answers.append(answered.futureResult)
        }
        for answer in answers where (try? answer.wait()) == nil {
            logger.warning(
                "an agent of the pod did not say what it steals of port \(port): going by what it said before")
        }
        return state.withLock { state in state.entries[port]?.map(\.claim) ?? [] }
    }

    private func ownClaims(of port: UInt16) -> [PortClaim] { state.withLock { $0.ownClaims(of: port) } }

    /// The connection to agent `name`, made if there is none; nil when it cannot be reached.
    private func peer(named name: String) -> (any Channel)? {
        if let peer = state.withLock({ $0.peers[name] }) { return peer }
        guard let loop = state.withLock({ $0.loop }), let socket = try? Self.connect(to: name),
            let channel = try? peerChannel(socket, name: name, on: loop).wait()
        else { return nil }
        channel.writeAndFlush(ByteBuffer(bytes: PeerMessage.hello(agent: agent).encoded), promise: nil)
        return state.withLock { state in
            if let earlier = state.peers[name] { return earlier }
            state.peers[name] = channel
            return channel
        }
    }

    /// A channel talking with another agent on `connection` (`name`: the agent there, when known; `read`:
    /// what was read of it already).
    private func peerChannel(
        _ connection: consuming OwnedDescriptor, name: String?, read: [UInt8] = [], on loop: any EventLoop
    ) -> EventLoopFuture<any Channel> {
        ClientBootstrap(group: loop)
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(PeerConnection(shares: self, name: name, read: read))
                }
            }
            .withConnectedSocket(connection.release())
    }

    /// A connection to agent `name`'s beacon, when an agent listens there (`isAgent`).
    static func connect(to name: String) throws(SystemCallError) -> OwnedDescriptor {
        let socket = try Self.streamSocket()
        try Sockets.connect(socket.raw, to: .abstract(Self.beaconPrefix + name))
        guard Self.isAgent(socket.raw) else { throw SystemCallError("connect", .permissionDenied) }
        return socket
    }

    private static func streamSocket() throws(SystemCallError) -> OwnedDescriptor {
        try Sockets.make(family: AF_UNIX, type: Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue))
    }

    /// The pod-wide lock of `port`'s claims: an abstract socket bound under the port's name, which one
    /// process at a time can hold, and which goes with its holder however it ends.
    private func lockPort(_ port: UInt16) throws -> OwnedDescriptor {
        let deadline = NIODeadline.now() + Self.answerTimeout
        while true {
            let socket = try Self.streamSocket()
            do throws(SystemCallError) {
                try Sockets.bind(socket.raw, to: .abstract("sysmirror-port-\(port)"))
                return socket
            } catch {
                guard error.errno == .addressInUse, NIODeadline.now() < deadline else { throw error }
                usleep(1_000)
            }
        }
    }

    /// On any thread, with the state locked: `port`'s entries from the claims known now.
    private func reorder(_ port: UInt16, _ state: inout State) {
        let all = state.ownClaims(of: port) + state.theirs.values.flatMap { $0[port] ?? [] }
        let previous = Dictionary(
            (state.entries[port] ?? []).map { ($0.claim, $0.filter) }, uniquingKeysWith: { first, _ in first })
        state.entries[port] = PortSharing.ordered(all).map { claim in
            // A peer's pattern compiled there too, so it compiles here; one that does not matches nothing.
            Entry(
                claim: claim,
                filter: previous[claim]
                    ?? ((try? HTTPFilter(headerPattern: claim.headerPattern, pathPattern: claim.pathPattern)) ?? nil))
        }
        if state.entries[port]?.isEmpty == true { state.entries[port] = nil }
        state.accepts?.keepWays(to: Set(state.entries.values.joined().map(\.claim.owner)))
    }

    private func tell(_ peers: [any Channel], _ message: PeerMessage) {
        let bytes = message.encoded
        for peer in peers { peer.writeAndFlush(ByteBuffer(bytes: bytes), promise: nil) }
    }

    // MARK: Requests (on the loops)

    /// Where a request to `port` goes: the first claim whose filter it matches (nil: the pod's application),
    /// and the later claims it matches too.
    func route(_ port: UInt16, _ head: HTTPHead) -> (winner: PortClaim?, missed: [PortClaim]) {
        let entries = state.withLock { state in state.entries[port] ?? [] }
        let subject = HTTPFilter.Subject(head)
        let (winner, missed) = PortSharing.route(entries) { $0.filter?.matches(subject) ?? false }
        return (winner?.claim, missed.map(\.claim))
    }

    /// Tells the sessions of `missed` that a request they match went to an earlier claim.
    func tellMissed(_ missed: [PortClaim], _ note: String) {
        for claim in missed {
            if claim.owner.agent == agent {
                session(claim.owner.session)?.notice(claim.port, note)
            } else if let peer = state.withLock({ $0.peers[claim.owner.agent] }) {
                tell([peer], .missed(owner: claim.owner, port: claim.port, note: note))
            }
        }
    }

    /// Opens the way to `claim`'s session for a connection from `client`: `connected` gets the side to
    /// write its requests to (the session's stream, or a delivery connection to its agent); `failed` runs
    /// when the session cannot take it.
    func open(
        _ claim: PortClaim, client: Endpoint, on loop: any EventLoop,
        connected: @escaping @Sendable (any RelaySide) -> Void, failed: @escaping @Sendable () -> Void
    ) {
        if claim.owner.agent == agent {
            guard let session = session(claim.owner.session) else { return failed() }
            return session.offer(claim.port, client: client, on: loop, take: connected, abandon: failed)
        }
        guard let socket = try? Self.connect(to: claim.owner.agent) else { return failed() }
        let first = PeerMessage.deliver(session: claim.owner.session, port: claim.port, client: client.socketAddress)
        ClientBootstrap(group: loop)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(.autoRead, value: false)
            .withConnectedSocket(socket.release())
            .whenComplete { result in
                guard case .success(let channel) = result else { return failed() }
                channel.writeAndFlush(ByteBuffer(bytes: first.encoded), promise: nil)
                connected(StreamEnd.hold(channel))
            }
    }

    private func session(_ number: UInt32) -> IncomingSession? {
        state.withLock { state in state.own.first { $0.claim.owner.session == number }?.session }
    }

    // MARK: What peers say (on their connections' loops)

    func heard(_ message: PeerMessage, from name: String?, on channel: any Channel) {
        switch message {
        case .hello(let agent):
            state.withLock { state in if state.peers[agent] == nil { state.peers[agent] = channel } }
        case .query(let port):
            channel.writeAndFlush(
                ByteBuffer(bytes: PeerMessage.claims(port: port, ownClaims(of: port)).encoded), promise: nil)
        case .claims(let port, let claims):
            guard let name else { return }
            state.withLock { state in
                state.theirs[name, default: [:]][port] = claims
                reorder(port, &state)
            }
            answerQuery(from: name, port: port)?.succeed()
        case .missed(let owner, let port, let note):
            session(owner.session)?.notice(port, note)
        case .deliver, .handedOver:
            break  // PeerConnection takes these itself
        }
    }

    /// The query of `port` waiting for agent `name`'s answer, taken: it is answered once.
    private func answerQuery(from name: String, port: UInt16) -> EventLoopPromise<Void>? {
        state.withLock { state in state.queries[name]?.removeValue(forKey: port) }
    }

    /// A delivery for `session`'s claim of `port`: its requests, from `client`.
    func delivered(_ end: StreamEnd, session number: UInt32, port: UInt16, client: Endpoint) {
        guard let session = session(number) else { return end.close() }
        session.offer(
            port, client: client, on: end.loop,
            take: { [logger] stream in
                StreamEnd.glue(end, stream) { received, sent in
                    logger.info(
                        "incoming connection from \(client) to port \(port): requests delivered by another agent, \(received) bytes in, \(sent) out"
                    )
                }
            }, abandon: { end.close() })
    }

    /// The connection to agent `name` ended: if that was the agent's end, its claims go, with their tables
    /// (a killed agent's redirect would otherwise send the port's connections nowhere).
    func lost(_ name: String, channel: any Channel) {
        let gone = state.withLock { state -> [PortClaim] in
            guard state.peers[name] === channel else { return [] }
            state.peers[name] = nil
            for (_, query) in state.queries.removeValue(forKey: name) ?? [:] {
                query.fail(ChannelError.ioOnClosedChannel)
            }
            let theirs = state.theirs.removeValue(forKey: name) ?? [:]
            for port in theirs.keys { reorder(port, &state) }
            return theirs.values.flatMap { $0 }
        }
        guard !gone.isEmpty, let netfilter else { return }
        pool.submit { [logger] _ in
            for claim in gone {
                netfilter.removeTable(claim.table)
                logger.notice(
                    "the agent of \(claim.developer)'s session, which stole port \(claim.port) too, is gone: removed its netfilter table \(claim.table); the port's other sessions keep their requests"
                )
            }
        }
    }
}

/// One connection with another agent of the pod: messages both ways, or, when it starts with `deliver`, a
/// stolen connection's requests for one of this agent's sessions.
final class PeerConnection: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    let shares: PortShares
    /// The agent at the other end, once known (the connecting side says it in `hello`).
    private var name: String?
    /// Whether the other end rings the doorbell of hand-overs here (`StolenAccepts`).
    private var ringsDoorbell = false
    private var received = ByteBuffer()

    init(shares: PortShares, name: String?, read: [UInt8]) {
        self.shares = shares
        self.name = name
        received = ByteBuffer(bytes: read)
    }

    func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        if received.readableBytes > 0 { takeMessages(context: context) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        received.writeBuffer(&bytes)
        takeMessages(context: context)
    }

    private func takeMessages(context: ChannelHandlerContext) {
        var rings = 0  // taken together, after the read
        defer { if rings > 0 { shares.accepts?.takeHandedOver(rings) } }
        while true {
            let parsed: PeerMessage.Parsed
            do {
                parsed = try received.withUnsafeReadableBytes { try PeerMessage.parse($0) }
            } catch {
                shares.logger.warning("closing a connection with another agent of the pod: \(error)")
                return context.close(promise: nil)
            }
            guard case .message(let message, let consumed) = parsed else { return }
            received.moveReaderIndex(forwardBy: consumed)
            switch message {
            case .deliver(let session, let port, let client):
                let channel = context.channel
                let rest = received
                context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
                guard let client = Endpoint(socketAddress: client) else { return channel.close(promise: nil) }

                return shares.delivered(
                    StreamEnd.hold(channel, read: rest), session: session, port: port, client: client)
            case .handedOver:
                ringsDoorbell = true
                rings += 1
            case .hello(let agent):
                name = agent
                shares.heard(message, from: agent, on: context.channel)
            default:
                shares.heard(message, from: name, on: context.channel)
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let name { shares.lost(name, channel: context.channel) }
        if ringsDoorbell { shares.accepts?.takeHandedOver() }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
}

extension Endpoint {
    /// A sockaddr_in or sockaddr_in6 as an endpoint.
    init?(socketAddress bytes: [UInt8]) {
        switch SyscallDecoding.SocketAddress(bytes) {
        case .inet(let address, let port)?: self.init(address: address, port: port)
        case .inet6(let address, let port, _)?: self.init(address: address, port: port)
        default: return nil
        }
    }
}

extension String {
    fileprivate func leftPadded(to length: Int) -> String {
        String(repeating: "0", count: max(0, length - count)) + self
    }
}
