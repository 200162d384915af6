import AgentProtocol
import Synchronization
import SyscallDecoding

import class LinuxSystem.EventLoop
import struct LinuxSystem.OwnedDescriptor
import class LinuxSystem.SharedDescriptor
import enum LinuxSystem.Sockets
import struct LinuxSystem.SystemCallError

#if canImport(Glibc)
    import Glibc
#endif

/// The connections of ports stolen by filter, accepted here rather than by a NIO listener because a
/// connection whose requests belong to another agent's session goes to that agent whole, descriptor and
/// all, and a NIO channel hides its descriptor; the connections other agents hand over; and the agents'
/// own, on the beacon, whose peer is checked before NIO has them (`PortShares.isAgent`). One thread (an
/// epoll loop of its own) for the agent's filtered listeners and its beacon.
///
/// A connection comes over in two parts: its descriptor and first bytes, in a datagram on the receiving
/// agent's hand-over socket (`sysmirror-handoff-NAME` in the pod's network namespace), and then the
/// doorbell, a `handedOver` frame on a connection to its beacon kept for the receiving session, which that
/// session's loop reads (`PeerConnection`). The loop takes the connection off the hand-over socket and
/// serves it: the thread woken is the one that serves it, as on a lone session's path, rather than one
/// more in between.
final class StolenAccepts: Sendable {
    static let handOffPrefix = "sysmirror-handoff-"
    /// What one hand-over carries besides the descriptor at most: the connection's first bytes.
    static let largestHandOff = 64 << 10
    /// How long a hand-over waits for its doorbell before the accepting thread takes it anyway: one whose
    /// ring never comes (its sender's sysmirror predates doorbells) is served all the same.
    static let unrungWait: UInt64 = 100_000_000

    private let loop: EventLoop
    private let handOffs: SharedDescriptor
    private let handedOver: @Sendable (PeerMessage, [UInt8], consuming OwnedDescriptor) -> Void
    /// The ways to the sessions this agent hands connections to, kept from the first hand-over to each.
    private let ways = Mutex<[PortClaim.Owner: Way]>([:])

    /// To another agent's session: its agent's hand-over socket, and its beacon for the session's doorbell
    /// (both connected).
    private struct Way: Sendable {
        let handOffs: SharedDescriptor
        let doorbell: SharedDescriptor
    }

    /// `handedOver` gets each connection another agent hands over (on the loop that heard its doorbell): its
    /// `deliver` message, the bytes read of it, and its descriptor.
    init(agent: String, handedOver: @escaping @Sendable (PeerMessage, [UInt8], consuming OwnedDescriptor) -> Void)
        throws
    {
        handOffs = SharedDescriptor(try Self.datagramSocket())
        try Sockets.setOption(handOffs.raw, SO_PASSCRED, 1)  // each hand-over says who sent it
        try Sockets.bind(handOffs.raw, to: .abstract(Self.handOffPrefix + agent))
        self.handedOver = handedOver
        loop = try EventLoop(name: "sysmirror-accept")
        loop.execute { [self] in watchUnrung() }
    }

    /// The hand-over socket wakes this thread once (one-shot), not for every hand-over: what is still there
    /// `unrungWait` later is taken, and the socket is watched again.
    private func watchUnrung() {
        var registration: EventLoop.Registration?
        registration = try? loop.register(handOffs.raw, for: [.readable, .oneShot]) { [self] _ in
            loop.schedule(in: Self.unrungWait) { [self] in
                takeHandedOver()
                if let registration { loop.rearm(registration, for: .readable) }
            }
        }
    }

    /// Takes `count` connections waiting on the hand-over socket, one for each ring heard (a stranger's
    /// datagram, ahead of them, goes without counting); all of them when a connection that rings ended (its
    /// last ring may not have been sent).
    func takeHandedOver(_ count: Int = .max) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.largestHandOff + 256, alignment: 8)
        defer { buffer.deallocate() }
        var taken = 0
        while taken < count {
            var descriptor: OwnedDescriptor?
            var sender = UInt32.max
            guard
                let length = try? Sockets.receive(handOffs.raw, into: buffer, descriptor: &descriptor, sender: &sender)
            else {
                return  // drained (EAGAIN)
            }
            let bytes = Array(buffer.prefix(length))
            // Only an agent hands connections over (a stranger's descriptor closes here).
            guard PortShares.isAgent(user: sender), let connection = descriptor.take(),
                case .message(let message, let consumed)? = try? PeerMessage.parse(bytes)
            else { continue }  // not a hand-over: nothing to take
            taken += 1
            handedOver(message, Array(bytes[consumed...]), connection)
        }
    }

    private static func datagramSocket() throws(SystemCallError) -> OwnedDescriptor {
        try Sockets.make(
            family: AF_UNIX,
            type: Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue))
    }

    /// Calls `accepted` (on this thread) with each connection `listener` takes, until the returned stop is
    /// called. The listener becomes non-blocking, and so do the connections.
    func watch(_ listener: SharedDescriptor, _ accepted: @escaping @Sendable (consuming OwnedDescriptor) -> Void)
        -> @Sendable () -> Void
    {
        try? listener.descriptor.setNonBlocking(true)  // cannot fail on a socket the agent holds
        let registration = Mutex<EventLoop.Registration?>(nil)
        let stopped = Mutex(false)
        loop.execute { [loop] in
            guard !stopped.withLock({ $0 }) else { return }
            registration.withLock { registered in
                registered = try? loop.register(listener.raw, for: .readable) { _ in
                    var peer: SocketAddress?
                    let flags = Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue)
                    while let connection = try? Sockets.accept(listener.raw, flags: flags, peer: &peer) {
                        accepted(connection)
                    }
                }
            }
        }
        return { [loop] in
            stopped.withLock { $0 = true }
            // The closure holds the listener until the loop has let it go.
            loop.execute {
                if let registered = registration.withLock({ $0 }) {
                    _ = listener
                    loop.deregister(registered)
                }
            }
        }
    }

    /// `watch`, with each connection's first bytes (what came with its first readiness: with an HTTP client,
    /// its first request's head). A connection `admits` refuses closes at once, before it is waited for.
    func watchReadingFirst(
        _ listener: SharedDescriptor, admitting admits: @escaping @Sendable (Int32) -> Bool = { _ in true },
        _ accepted: @escaping @Sendable (consuming OwnedDescriptor, [UInt8]) -> Void
    ) -> @Sendable () -> Void {
        watch(listener) { [loop] connection in
            guard admits(connection.raw) else { return }  // closes here
            // The registration holds the connection until its first bytes (or its end) come.
            let socket = connection.release()
            loop.whenReady(socket, for: .readable) { _ in
                let connection = OwnedDescriptor(taking: socket)
                // Nil: not readable after all, or failed (NIO hears of it again).
                let first = try? Sockets.receive(socket, upTo: Self.largestHandOff)
                if first?.isEmpty == true { return }  // ended before a byte: it closes here
                accepted(connection, first ?? [])
            }
        }
    }

    /// Hands the connection `socket` over to `owner` (a session of another agent of the pod), with its
    /// `deliver` and the bytes read of it so far; false when it cannot (the caller keeps the connection
    /// then). On the accepting thread.
    func handOff(_ socket: Int32, to owner: PortClaim.Owner, client: [UInt8], port: UInt16, read: [UInt8]) -> Bool {
        let message = PeerMessage.deliver(session: owner.session, port: port, client: client).encoded + read
        guard message.count <= Self.largestHandOff + 256, let way = way(to: owner) else { return false }
        guard (try? Sockets.send(way.handOffs.raw, message, passing: socket)) == message.count else {
            forget(owner)  // gone, or not taking any (its queue is full)
            return false
        }
        // A doorbell that is not sent whole closes its connection, whose end rings it.
        let doorbell = PeerMessage.handedOver(session: owner.session).encoded
        if (try? Sockets.send(way.doorbell.raw, doorbell[...])) != doorbell.count { forget(owner) }
        return true
    }

    /// The kept way to `owner`, made if there is none; nil when it cannot be reached.
    private func way(to owner: PortClaim.Owner) -> Way? {
        if let way = ways.withLock({ $0[owner] }) { return way }
        do throws(SystemCallError) {
            let handOffs = try Self.datagramSocket()
            try Sockets.connect(handOffs.raw, to: .abstract(Self.handOffPrefix + owner.agent))
            let doorbell = try PortShares.connect(to: owner.agent)
            try doorbell.setNonBlocking(true)  // a doorbell that would wait is not sent
            let way = Way(handOffs: SharedDescriptor(handOffs), doorbell: SharedDescriptor(doorbell))
            ways.withLock { $0[owner] = way }
            return way
        } catch {
            return nil
        }
    }

    private func forget(_ owner: PortClaim.Owner) {
        _ = ways.withLock { $0.removeValue(forKey: owner) }
    }

    /// Lets the ways to sessions other than `owners` (those that claim ports now) go.
    func keepWays(to owners: Set<PortClaim.Owner>) {
        ways.withLock { ways in ways = ways.filter { owners.contains($0.key) } }
    }
}
