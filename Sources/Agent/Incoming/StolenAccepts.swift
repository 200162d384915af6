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
/// epoll loop of its own) for the agent's filtered listeners, its beacon and its hand-over socket, a
/// datagram socket named `sysmirror-handoff-NAME` in the pod's network namespace.
final class StolenAccepts: Sendable {
    static let handOffPrefix = "sysmirror-handoff-"
    /// What one hand-over carries besides the descriptor at most: the connection's first bytes.
    static let largestHandOff = 64 << 10

    private let loop: EventLoop
    private let handOffs: SharedDescriptor

    /// `handedOver` gets each connection another agent hands over: its `deliver` message, the bytes read of
    /// it, and its descriptor.
    init(agent: String, handedOver: @escaping @Sendable (PeerMessage, [UInt8], consuming OwnedDescriptor) -> Void)
        throws
    {
        handOffs = SharedDescriptor(try Self.datagramSocket())
        try Sockets.setOption(handOffs.raw, SO_PASSCRED, 1)  // each hand-over says who sent it
        try Sockets.bind(handOffs.raw, to: .abstract(Self.handOffPrefix + agent))
        loop = try EventLoop(name: "sysmirror-accept")
        loop.execute { [loop, handOffs] in
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.largestHandOff + 256, alignment: 8)
            _ = try? loop.register(handOffs.raw, for: .readable) { _ in
                while true {
                    var descriptor: OwnedDescriptor?
                    var sender = UInt32.max
                    guard
                        let count = try? Sockets.receive(
                            handOffs.raw, into: buffer, descriptor: &descriptor, sender: &sender)
                    else {
                        return  // drained (EAGAIN)
                    }
                    let bytes = Array(buffer.prefix(count))
                    // Only an agent hands connections over (a stranger's descriptor closes here).
                    guard PortShares.isAgent(user: sender), let connection = descriptor.take(),
                        case .message(let message, let consumed)? = try? PeerMessage.parse(bytes)
                    else { continue }  // not a hand-over: nothing to take
                    handedOver(message, Array(bytes[consumed...]), connection)
                }
            }
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
    /// its first request's head).
    func watchReadingFirst(
        _ listener: SharedDescriptor, _ accepted: @escaping @Sendable (consuming OwnedDescriptor, [UInt8]) -> Void
    ) -> @Sendable () -> Void {
        watch(listener) { [loop] connection in
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

    /// Hands the connection `socket` over to `agent` (a peer in the pod), with `first` (its `deliver`) and
    /// the bytes read of it so far; false when it cannot (the caller keeps the connection then).
    static func handOff(_ socket: Int32, to agent: String, _ first: PeerMessage, read: [UInt8]) -> Bool {
        let message = first.encoded + read
        guard message.count <= largestHandOff + 256, let sender = try? datagramSocket() else { return false }
        do throws(SystemCallError) {
            try Sockets.connect(sender.raw, to: .abstract(handOffPrefix + agent))
            return try Sockets.send(sender.raw, message, passing: socket) == message.count
        } catch {
            return false
        }
    }
}
