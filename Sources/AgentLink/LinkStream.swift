import AgentProtocol
import LinuxSystem
import SyscallDecoding
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// A TCP connection of the pod relayed on the session's link, beside everything else on it (docs/protocol.md,
/// "Relayed connections"): opened with one request (`connect`, or `take incoming` for a stolen connection),
/// so one round trip however many open at once; then its bytes travel as `chunk`s and its ends of input as
/// `end`s, within a `StreamWindow` each way, so a reader that falls behind holds up its own connection only.
/// `relay` joins it to a local socket (the program's, through a loopback pair) on the serving loop.
///
/// Everything happens on `loop`: the link's reader thread hands each reply over.
public final class LinkStream: @unchecked Sendable {  // its state is touched only on `loop`
    public typealias Opened = (Result<LinkStream, Errno>) -> Void

    /// How a relay ended: the bytes each way, and who cut the connection (reset it), if anyone did.
    public struct Outcome: Sendable {
        public let fromSocket: Int
        public let fromPod: Int
        public let cut: Cut?
    }

    public enum Cut: Sendable, CustomStringConvertible {
        /// The pod's end was reset (the agent says how).
        case pod(String)
        /// The link failed under it (dropped, or broke the protocol).
        case link(String)
        /// The program's end was reset, or went.
        case program

        public var description: String {
            switch self {
            case .pod(let reason), .link(let reason): reason
            case .program: "the program's end was reset"
            }
        }
    }

    private enum Phase {
        case opening(Opened)
        case open
        /// Cut before a socket was joined to it: `relay` resets that socket at once.
        case cutEarly(Cut)
        case ended
    }

    let client: AgentClient
    let loop: EventLoop
    private var id: UInt32 = 0
    private var phase: Phase
    /// Fails the open if the agent has not answered by then.
    private var openDeadline: EventLoop.Timer?
    private var window = StreamWindow()
    private var socket: SharedDescriptor?
    private var interest = EventLoop.Interest()
    /// The pod's bytes the socket has not taken yet (at most a window's worth), and how many it has.
    private var inbound: [UInt8] = []
    private var inboundTaken = 0
    /// The pod's end of input came; the socket's output is shut down once `inbound` is written.
    private var podEnded = false
    private var outputShut = false
    /// The socket's end of input was read and passed on.
    private var socketEnded = false
    private var fromSocket = 0, fromPod = 0
    private var finished: ((Outcome) -> Void)?
    static let pieceSize = 64 << 10

    private init(client: AgentClient, loop: EventLoop, opened: @escaping Opened) {
        self.client = client
        self.loop = loop
        phase = .opening(opened)
    }

    /// On the loop: a connection from the pod to `destination`; fails with the errno the pod's connect got
    /// (the agent gives up after 30 s), or ECONNREFUSED when the link is gone.
    public static func connect(
        to destination: SocketAddress, through client: AgentClient, on loop: EventLoop, _ opened: @escaping Opened
    ) {
        open(.connect(address: destination.bytes), timeoutSeconds: 35, client, loop, opened)
    }

    /// On the loop: the pod's stolen connection `connection`; fails with the errno the agent answered
    /// (ENOENT: it went to the pod's application meanwhile), or ECONNREFUSED.
    public static func take(
        incoming connection: UInt64, through client: AgentClient, on loop: EventLoop, _ opened: @escaping Opened
    ) {
        open(.takeIncoming(connection: connection), timeoutSeconds: 10, client, loop, opened)
    }

    private static func open(
        _ request: Request, timeoutSeconds: UInt64, _ client: AgentClient, _ loop: EventLoop, _ opened: @escaping Opened
    ) {
        let stream = LinkStream(client: client, loop: loop, opened: opened)
        stream.id = client.openStream(
            request, credit: { bytes in loop.execute { stream.granted(bytes) } },
            handler: { reply in
                loop.execute { stream.heard(reply) }
                return .waitingOnClient
            })
        stream.openDeadline = loop.schedule(in: timeoutSeconds * 1_000_000_000) { [stream] in
            guard case .opening(let opened) = stream.phase else { return }
            stream.phase = .ended
            client.cancel(stream.id)
            opened(.failure(.timedOut))
        }
    }

    /// Joins `socket` (non-blocking, connected) to the pod's connection until both directions end or one is
    /// cut (then `socket` is reset); `finished` hears how it went. The stream holds `socket` until then.
    public func relay(with socket: SharedDescriptor, _ finished: @escaping (Outcome) -> Void) {
        self.socket = socket
        self.finished = finished
        if case .cutEarly(let cause) = phase { return cut(cause) }
        progress()
    }

    /// The opener has no socket for it after all (the program's call went away): the pod's end is reset.
    public func abandon() {
        guard case .open = phase else { return }
        phase = .ended
        client.cancel(id)
    }

    // MARK: The agent's side

    private func heard(_ reply: Reply) {
        switch (phase, reply) {
        case (.opening(let opened), .response(.done)):
            endOpening()
            phase = .open
            opened(.success(self))
        case (.opening(let opened), _):
            endOpening()
            phase = .ended
            client.forget(id)
            switch reply {
            case .response(.failure(let errno, _)): opened(.failure(Errno(rawValue: errno)))
            case .linkFailure: opened(.failure(.connectionRefused))
            case .response, .chunk, .end: opened(.failure(.ioError))
            }
        case (.open, .chunk(let bytes)):
            do throws(StreamWindow.Violation) {
                try window.received(bytes.count)
            } catch {
                client.cancel(id)
                return cut(.link("the agent sent past the connection's window"))
            }
            inbound += bytes
            fromPod += bytes.count
            progress()
        case (.open, .end):
            podEnded = true
            progress()
        case (.open, .response(.failure(_, let message))):
            cut(.pod(message.isEmpty ? "the pod's end was reset" : message))
        case (.open, .linkFailure(let reason)):
            cut(.link(reason))
        case (.open, .response):
            client.cancel(id)
            cut(.link("the agent answered a relayed connection with something else than its bytes"))
        case (.cutEarly, _), (.ended, _):
            break
        }
    }

    private func endOpening() {
        if let openDeadline { loop.cancel(openDeadline) }
        openDeadline = nil
    }

    private func granted(_ bytes: Int) {
        guard case .open = phase else { return }
        do throws(StreamWindow.Violation) {
            try window.granted(bytes)
        } catch {
            client.cancel(id)
            return cut(.link("the agent granted more than the connection's window"))
        }
        progress()
    }

    // MARK: The socket's side

    private func ready(_ events: EventLoop.Events) {
        guard let socket else { return }
        if events.contains(.error) {
            client.cancel(id)
            return cut(.program)  // the pod's end is reset by the cancel
        }
        if !socketEnded && !events.isDisjoint(with: [.readable, .hangUp]) {
            // A few pieces a turn, so that one busy connection does not keep the loop from the others.
            for _ in 0..<4 where window.sendable > 0 && !socketEnded {
                do throws(SystemCallError) {
                    let bytes = try Sockets.receive(
                        socket.raw, upTo: min(window.sendable, Self.pieceSize), flags: Int32(MSG_DONTWAIT))
                    if bytes.isEmpty { socketEnded = true }
                    window.sent(bytes.count)
                    fromSocket += bytes.count
                    try? client.upload(id, bytes.isEmpty ? nil : bytes)  // a link gone says so to `heard`
                } catch {
                    if error.errno == .resourceTemporarilyUnavailable || error.errno == .interrupted { break }
                    client.cancel(id)
                    return cut(.program)
                }
            }
        }
        progress()
    }

    /// Writes what the pod sent, passes its end on, ends the relay once both directions are over, and
    /// waits for what is still to come.
    private func progress() {
        guard case .open = phase, let socket else { return }
        while inboundTaken < inbound.count {
            do throws(SystemCallError) {
                let count = try Sockets.send(socket.raw, inbound[inboundTaken...])
                inboundTaken += count
                if let credit = window.passOn(count) { client.grant(id, credit) }
            } catch {
                if error.errno == .resourceTemporarilyUnavailable || error.errno == .interrupted { break }
                client.cancel(id)
                return cut(.program)
            }
        }
        if inboundTaken == inbound.count {
            inbound.removeAll(keepingCapacity: true)
            inboundTaken = 0
            if podEnded && !outputShut {
                outputShut = true
                try? Sockets.shutdownOutput(socket.raw)  // a program already gone: its reads say so
            }
        }
        if socketEnded && outputShut { return end(cut: nil) }
        var wanted: EventLoop.Events = []
        if !socketEnded && window.sendable > 0 { wanted.insert(.readable) }
        if inboundTaken < inbound.count { wanted.insert(.writable) }
        do throws(SystemCallError) {
            try interest.want(wanted, on: socket.raw, in: loop) { [self] in ready($0) }
        } catch {
            client.cancel(id)
            cut(.link("the serving loop could not watch the connection: \(error)"))
        }
    }

    /// Resets the socket, as the pod's end was (or the link that carried it went), and ends.
    private func cut(_ cause: Cut) {
        guard let socket else {
            phase = .cutEarly(cause)
            return
        }
        try? Sockets.resetOnClose(socket.raw)  // best effort: a socket that failed resets anyway
        try? Sockets.disconnect(socket.raw)
        end(cut: cause)
    }

    private func end(cut cause: Cut?) {
        interest.end(in: loop)
        phase = .ended
        client.forget(id)
        socket = nil
        inbound = []
        let finished = self.finished
        self.finished = nil
        finished?(Outcome(fromSocket: fromSocket, fromPod: fromPod, cut: cause))
    }
}
