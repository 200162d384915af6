import CSysmirror
import LinuxSystem
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The local ends of mirrored connections. The agent sends each copy on the listen stream; here every copy
/// is written to a connection of its own to the program's listening socket, and what the program answers
/// is read and dropped. One thread serves them all with non-blocking sockets, so the link's reader hands
/// bytes over and never waits for the program.
final class MirrorFeed: Sendable {
    /// How a copy's local connection ended.
    enum Outcome: Sendable {
        /// The program was not listening any more (its connect was refused).
        case refused
        /// The bytes written to the program, and those it answered (dropped); not `whole` when the copy was
        /// cut short (by the agent, or because the program stopped reading).
        case ended(bytesIn: Int, answered: Int, whole: Bool)
    }

    /// What the link brought for the copies, in order.
    enum Event {
        /// `fd` is a non-blocking socket connected (or `connecting`) to the program for copy `id`, which the
        /// feed takes over; `finished` is called once, on the feed's thread, when it is closed.
        case opened(UInt64, fd: Int32, connecting: Bool, finished: @Sendable (Outcome) -> Void)
        /// The next client bytes of copy `id`.
        case bytes(UInt64, [UInt8])
        /// The client ended copy `id`: the program reads to its end, then sees the end of input. An
        /// incomplete copy is reset instead, so the program never takes a cut request for a whole one.
        case ended(UInt64, complete: Bool)
        /// The link is gone, and with it the rest of every copy: all are reset.
        case linkLost
    }

    /// One local connection: the copy's bytes still to write, and how far each side is.
    private struct Copy {
        let fd: Int32
        let finished: @Sendable (Outcome) -> Void
        var connecting: Bool
        var output: [UInt8] = []
        var written = 0
        var bytesIn = 0
        var answered = 0
        /// The agent sent the end: shut down once `output` is written.
        var inputEnded = false
        var shutDown = false
        var programClosed = false
    }

    /// A copy the program does not read is reset beyond this much unwritten, rather than held.
    static let unreadLimit = 8 << 20
    private let events = Mutex<[Event]>([])
    private let wakeUp = sysm_eventfd()

    /// Starts the feed's thread.
    init() throws {
        guard wakeUp >= 0 else { throw SystemCallError("eventfd", currentErrno()) }
        _ = try ThreadHandle.start(name: "sysmirror-mirror") { [self] in run() }
    }

    /// Hands `events` to the feed's thread.
    func post(_ events: [Event]) {
        guard !events.isEmpty else { return }
        let wasEmpty = self.events.withLock { queued in
            defer { queued += events }
            return queued.isEmpty
        }
        if wasEmpty {
            var one: UInt64 = 1
            _ = write(wakeUp, &one, 8)
        }
    }

    private func run() {
        var copies: [UInt64: Copy] = [:]
        while true {
            let arrived = events.withLock { events in
                let taken = events
                events = []
                return taken
            }
            for event in arrived { Self.apply(event, to: &copies) }
            for id in Array(copies.keys) where !Self.advance(&copies[id]!) {
                Self.finish(copies.removeValue(forKey: id)!, reset: false)
            }
            // The wake-up first, then each copy: its answers to read, its bytes to write, its connect to end.
            let order = Array(copies.keys)
            var fds = [pollfd(fd: wakeUp, events: Int16(POLLIN), revents: 0)]
            for id in order {
                let copy = copies[id]!
                var wanted = copy.programClosed ? 0 : Int16(POLLIN)
                if copy.connecting || copy.written < copy.output.count { wanted |= Int16(POLLOUT) }
                fds.append(pollfd(fd: copy.fd, events: wanted, revents: 0))
            }
            guard poll(&fds, nfds_t(fds.count), -1) >= 0 || errno == EINTR else { return }
            if fds[0].revents != 0 {
                var count: UInt64 = 0
                _ = read(wakeUp, &count, 8)
            }
            for (index, id) in order.enumerated() where fds[index + 1].revents != 0 {
                if copies[id]!.connecting {
                    guard ProgramDescriptor.socketOption(copies[id]!.fd, SO_ERROR) == 0 else {
                        let copy = copies.removeValue(forKey: id)!
                        close(copy.fd)
                        copy.finished(.refused)
                        continue
                    }
                    copies[id]!.connecting = false
                }
                let revents = Int32(fds[index + 1].revents)
                if revents & (POLLIN | POLLHUP | POLLERR) != 0 && !Self.drainAnswers(&copies[id]!) {
                    Self.finish(copies.removeValue(forKey: id)!, reset: false)
                }
            }
        }
    }

    private static func apply(_ event: Event, to copies: inout [UInt64: Copy]) {
        switch event {
        case .opened(let id, let fd, let connecting, let finished):
            copies[id] = Copy(fd: fd, finished: finished, connecting: connecting)
        case .bytes(let id, let bytes):
            guard copies[id] != nil else { return }
            copies[id]!.output += bytes
            copies[id]!.bytesIn += bytes.count
            if copies[id]!.output.count - copies[id]!.written > unreadLimit {
                finish(copies.removeValue(forKey: id)!, reset: true)
            }
        case .ended(let id, let complete):
            if complete {
                copies[id]?.inputEnded = true
            } else if let copy = copies.removeValue(forKey: id) {
                finish(copy, reset: true)
            }
        case .linkLost:
            for copy in copies.values { finish(copy, reset: true) }
            copies = [:]
        }
    }

    /// Writes what it can and shuts the output down once the copy is whole; false when the connection is
    /// over (both sides ended, or the program is gone).
    private static func advance(_ copy: inout Copy) -> Bool {
        guard !copy.connecting else { return true }
        while copy.written < copy.output.count {
            let count = copy.output[copy.written...].withUnsafeBytes {
                Glibc.send(copy.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
            }
            if count > 0 {
                copy.written += count
            } else if count < 0 && errno == EINTR {
                continue
            } else {
                guard count < 0 && errno == EAGAIN else { return false }
                break
            }
        }
        if copy.written == copy.output.count && copy.written > 0 {
            copy.output = []
            copy.written = 0
        }
        if copy.inputEnded && copy.output.isEmpty && !copy.shutDown {
            shutdown(copy.fd, Int32(SHUT_WR))
            copy.shutDown = true
        }
        return !(copy.shutDown && copy.programClosed)
    }

    /// Reads and drops the program's answers; false when the connection failed.
    private static func drainAnswers(_ copy: inout Copy) -> Bool {
        var buffer = [UInt8](repeating: 0, count: 16 << 10)
        while true {
            let count = read(copy.fd, &buffer, buffer.count)
            if count > 0 {
                copy.answered += count
            } else if count == 0 {
                copy.programClosed = true
                return true
            } else {
                return errno == EAGAIN || errno == EINTR
            }
        }
    }

    private static func finish(_ copy: Copy, reset: Bool) {
        if reset {
            var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
            setsockopt(copy.fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        }
        close(copy.fd)
        let unwritten = copy.output.count - copy.written
        copy.finished(.ended(bytesIn: copy.bytesIn - unwritten, answered: copy.answered, whole: !reset))
    }
}
