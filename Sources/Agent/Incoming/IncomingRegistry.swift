import Incoming
import Logging
import NIOCore
import NIOPosix
import Synchronization

import struct LinuxSystem.OwnedDescriptor

/// The pod's connections waiting for a client to take them (agent-wide: their ids are unique across
/// sessions), and what incoming traffic needs agent-wide.
final class IncomingRegistry: Sendable {
    struct Waiting: Sendable {
        /// Given its id and the stream of the session that took it, on that session's loop.
        let take: @Sendable (UInt64, LinkStreamEnd) -> Void
        /// Not taken in time, or its session ended or stopped listening; given its id.
        let abandon: @Sendable (UInt64) -> Void
    }

    /// How long a connection waits to be taken before it goes to the pod's application instead.
    static let takeTimeout = TimeAmount.seconds(10)

    let netfilter: Netfilter?
    /// The pod's stolen ports as all its agents claim them.
    let shares: PortShares
    private let waiting = Mutex<[UInt64: Waiting]>([:])
    /// The sessions that steal a port whole, by the pod's port (one session a port): the socket channel
    /// hands their listening sockets over.
    private let stealers = Mutex<[UInt16: IncomingSession]>([:])
    private let nextID = Atomic<UInt64>(0)
    private let cleanedUp = Atomic<Bool>(false)

    init(pool: NIOThreadPool, logger: Logger) {
        netfilter = Netfilter.locate()
        shares = PortShares(netfilter: netfilter, pool: pool, logger: logger)
    }

    /// Registers a connection; nobody taking it within `takeTimeout` abandons it.
    func add(_ entry: Waiting, on loop: any EventLoop) -> UInt64 {
        let id = nextID.add(1, ordering: .relaxed).newValue
        waiting.withLock { $0[id] = entry }
        loop.scheduleTask(in: Self.takeTimeout) { [self] in remove(id)?.abandon(id) }
        return id
    }

    func remove(_ id: UInt64) -> Waiting? {
        waiting.withLock { $0.removeValue(forKey: id) }
    }

    func stealing(_ port: UInt16, by session: IncomingSession) {
        stealers.withLock { $0[port] = session }
    }

    func stoppedStealing(_ port: UInt16, by session: IncomingSession) {
        stealers.withLock { if $0[port] === session { $0[port] = nil } }
    }

    /// The listening socket of `family` of stolen `port`, taken over by a client of the socket channel; nil
    /// when no session steals it whole.
    func handOver(_ port: UInt16, family: Int32) -> OwnedDescriptor? {
        stealers.withLock { $0[port] }?.handOver(port: port, family: family)
    }

    /// Before a session's first rules: the agent's beacon goes up (once), and tables left by agents that
    /// are gone (killed before they could remove their own) go.
    func prepare(on loop: any EventLoop, logger: Logger) throws {
        try shares.start(on: loop)
        guard let netfilter, !cleanedUp.exchange(true, ordering: .relaxed) else { return }
        let running = shares.runningAgents()
        for table in netfilter.removeStaleTables(isAlive: running.contains) {
            logger.notice("removed the netfilter table \(table), left by an agent that is gone")
        }
    }
}

extension Endpoint {
    /// A NIO address as an endpoint; IPv4-mapped IPv6 addresses become IPv4.
    init?(_ address: SocketAddress?) {
        switch address {
        case .v4(let v4)?:
            self.init(
                address: withUnsafeBytes(of: v4.address.sin_addr) { Array($0) },
                port: UInt16(v4.address.sin_port.bigEndian))
        case .v6(let v6)?:
            let bytes = withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
            let port = UInt16(v6.address.sin6_port.bigEndian)
            let mapped = bytes.prefix(10).allSatisfy { $0 == 0 } && bytes[10] == 0xff && bytes[11] == 0xff
            self.init(address: mapped ? Array(bytes[12...]) : bytes, port: port)
        default:
            return nil
        }
    }

    /// As a NIO address, for connecting.
    var nioAddress: SocketAddress? {
        try? SocketAddress(packedIPAddress: ByteBuffer(bytes: address), port: Int(port))
    }
}
