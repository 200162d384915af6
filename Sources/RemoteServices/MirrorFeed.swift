import CSysmirror
import LinuxSystem
import Synchronization
import UserNotification

#if canImport(Glibc)
    import Glibc
#endif

/// The local ends of mirrored connections. The agent sends each copy on the listen stream; here every copy
/// is written to a connection of its own to the program's listening socket, and what the program answers
/// is read and dropped. Each copy is a registration on the serving event loop, with non-blocking sockets,
/// so the link's reader hands bytes over and never waits for the program.
final class MirrorFeed: @unchecked Sendable {  // `copies` is touched only on `loop`
    /// How a copy's local connection ended.
    enum Outcome: Sendable {
        /// The program was not listening any more (its connect was refused).
        case refused
        /// The bytes written to the program, and those it answered (dropped); not `whole` when the copy was
        /// cut short (by the agent, or because the program stopped reading).
        case ended(bytesIn: Int, answered: Int, whole: Bool)
    }

    /// What the link brought for the copies, in order.
    enum Event: Sendable {
        /// `fd` is a non-blocking socket connected (or `connecting`) to the program for copy `id`, which the
        /// feed takes over; `finished` is called once, on the loop, when it is let go.
        case opened(UInt64, fd: SharedDescriptor, connecting: Bool, finished: @Sendable (Outcome) -> Void)
        /// The next client bytes of copy `id`.
        case bytes(UInt64, [UInt8])
        /// The client ended copy `id`: the program reads to its end, then sees the end of input. An
        /// incomplete copy is reset instead, so the program never takes a cut request for a whole one.
        case ended(UInt64, complete: Bool)
        /// The link is gone, and with it the rest of every copy: all are reset.
        case linkLost
    }

    /// One local connection: the copy's bytes still to write, and how far each side is.
    private final class Copy {
        let fd: SharedDescriptor
        let finished: @Sendable (Outcome) -> Void
        var registration: EventLoop.Registration?
        /// What the registration waits for now: changed only when it must be (each change is a syscall).
        var interest: EventLoop.Events = []
        var connecting: Bool
        var output: [UInt8] = []
        var written = 0
        var bytesIn = 0
        var answered = 0
        /// The agent sent the end: shut down once `output` is written.
        var inputEnded = false
        var shutDown = false
        var programClosed = false

        init(fd: SharedDescriptor, connecting: Bool, finished: @escaping @Sendable (Outcome) -> Void) {
            self.fd = fd
            self.connecting = connecting
            self.finished = finished
        }
    }

    /// A copy the program does not read is reset beyond this much unwritten, rather than held.
    static let unreadLimit = 8 << 20
    private let loop: EventLoop
    private var copies: [UInt64: Copy] = [:]

    init(loop: EventLoop) { self.loop = loop }

    /// Hands `events` to the loop, from the link's thread.
    func post(_ events: [Event]) {
        guard !events.isEmpty else { return }
        loop.execute { [self] in for event in events { apply(event) } }
    }

    private func apply(_ event: Event) {
        switch event {
        case .opened(let id, let fd, let connecting, let finished):
            let copy = Copy(fd: fd, connecting: connecting, finished: finished)
            copies[id] = copy
            do {
                copy.interest = connecting ? .writable : .readable
                copy.registration = try loop.register(fd.raw, for: copy.interest) { [self] in ready(id, $0) }
            } catch {
                finish(id, reset: true)
            }
        case .bytes(let id, let bytes):
            guard let copy = copies[id] else { return }
            copy.output += bytes
            copy.bytesIn += bytes.count
            if copy.output.count - copy.written > Self.unreadLimit { return finish(id, reset: true) }
            advance(id)
        case .ended(let id, let complete):
            guard let copy = copies[id] else { return }
            if complete {
                copy.inputEnded = true
                advance(id)
            } else {
                finish(id, reset: true)
            }
        case .linkLost:
            for id in Array(copies.keys) { finish(id, reset: true) }
        }
    }

    private func ready(_ id: UInt64, _ events: EventLoop.Events) {
        guard let copy = copies[id] else { return }
        if copy.connecting {
            guard (try? Sockets.pendingError(copy.fd.raw)) == 0 else {
                copies[id] = nil
                if let registration = copy.registration { loop.deregister(registration) }
                return copy.finished(.refused)
            }
            copy.connecting = false
        }
        if !events.isDisjoint(with: [.readable, .hangUp, .error]) && !drainAnswers(copy) {
            return finish(id, reset: false)
        }
        advance(id)
    }

    /// Writes what it can and shuts the output down once the copy is whole; lets the copy go once both
    /// sides have ended or the program is gone; then waits for what is left.
    private func advance(_ id: UInt64) {
        guard let copy = copies[id], !copy.connecting else { return }
        while copy.written < copy.output.count {
            do throws(SystemCallError) {
                copy.written += try Sockets.send(copy.fd.raw, copy.output[copy.written...])
            } catch  where error.errno == .resourceTemporarilyUnavailable || error.errno == .interrupted {
                break
            } catch {
                return finish(id, reset: false)
            }
        }
        if copy.written == copy.output.count && copy.written > 0 {
            copy.output = []
            copy.written = 0
        }
        if copy.inputEnded && copy.output.isEmpty && !copy.shutDown {
            try? Sockets.shutdownOutput(copy.fd.raw)  // a program already gone: its reads say so
            copy.shutDown = true
        }
        if copy.shutDown && copy.programClosed { return finish(id, reset: false) }
        var wanted: EventLoop.Events = copy.programClosed ? [] : .readable
        if copy.written < copy.output.count { wanted.insert(.writable) }
        if let registration = copy.registration, wanted != copy.interest {
            copy.interest = wanted
            loop.change(registration, to: wanted)
        }
    }

    /// Reads and drops the program's answers; false when the connection failed.
    private func drainAnswers(_ copy: Copy) -> Bool {
        while true {
            do throws(SystemCallError) {
                let count = try Sockets.receive(copy.fd.raw, upTo: 16 << 10).count
                guard count > 0 else {
                    copy.programClosed = true
                    return true
                }
                copy.answered += count
            } catch {
                return error.errno == .resourceTemporarilyUnavailable || error.errno == .interrupted
            }
        }
    }

    private func finish(_ id: UInt64, reset: Bool) {
        guard let copy = copies.removeValue(forKey: id) else { return }
        if let registration = copy.registration { loop.deregister(registration) }
        if reset { try? Sockets.resetOnClose(copy.fd.raw) }  // a socket already failed resets anyway
        let unwritten = copy.output.count - copy.written
        copy.finished(.ended(bytesIn: copy.bytesIn - unwritten, answered: copy.answered, whole: !reset))
    }
}
