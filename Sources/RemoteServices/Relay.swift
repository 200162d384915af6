import AgentProtocol
import LinuxSystem
import UserNotification

#if canImport(Glibc)
    import Glibc
#endif

/// Two connected stream sockets glued together on the serving event loop: what one end reads, the other
/// writes, with back-pressure (an end is not read while the other has not taken its last piece), half-close
/// (an end's EOF becomes a shutdown of the other's output), and resets passed on (an end that fails resets
/// the other). Non-blocking sockets only; no thread. An end may speak `StreamFraming` (a link connection
/// through a port-forward, which cannot carry a half-close itself): its pieces are unwrapped, the other
/// end's bytes wrapped, and ends of input travel as pieces.
public final class Relay {
    private let loop: EventLoop
    private let ends: [SharedDescriptor]
    private var registrations: [EventLoop.Registration?] = [nil, nil]
    /// What each registration waits for now: changed only when it must be (each change is a syscall).
    private var interests: [EventLoop.Events] = [.readable, .readable]
    /// What end i brought: its buffer, read into again and again (a relay allocates nothing per piece), how
    /// much of it holds bytes, and how much of those the other end has taken.
    private var buffers: [[UInt8]] = [[], []]
    private var filled = [0, 0]
    private var taken = [0, 0]
    /// Whether end i may still bring bytes.
    private var reading = [true, true]
    /// Whether end i's output was shut down (the other end's EOF passed on).
    private var shutDown = [false, false]
    /// Bytes read from each end (data only, for a framed end).
    private var counts = [0, 0]
    /// The end that speaks `StreamFraming`, if one does, and what has come from it so far.
    private let framed: Int?
    private var reader = StreamFraming.Reader()
    private var finished: ((_ fromFirst: Int, _ fromSecond: Int) -> Void)?
    static let pieceSize = 64 << 10

    private init(loop: EventLoop, ends: [SharedDescriptor], framed: Int?, finished: @escaping (Int, Int) -> Void) {
        self.loop = loop
        self.ends = ends
        self.framed = framed
        self.finished = finished
    }

    /// On the loop: relays `first` and `second` (both non-blocking) until both directions end or one fails
    /// (then both are reset before `finished` hears of it); `finished` hears the bytes each end brought. The
    /// descriptors close when their last holder lets go. `secondIsFramed`: `second` speaks StreamFraming.
    public static func start(
        on loop: EventLoop, _ first: SharedDescriptor, _ second: SharedDescriptor, secondIsFramed: Bool = false,
        finished: @escaping (_ fromFirst: Int, _ fromSecond: Int) -> Void
    ) {
        let relay = Relay(loop: loop, ends: [first, second], framed: secondIsFramed ? 1 : nil, finished: finished)
        for end in 0..<2 {
            do {
                relay.registrations[end] = try loop.register(relay.ends[end].raw, for: .readable) {
                    relay.ready(end, $0)
                }
            } catch {
                return relay.finish(reset: true)
            }
        }
    }

    private func ready(_ end: Int, _ events: EventLoop.Events) {
        let other = 1 - end
        if events.contains(.error) { return finish(reset: true) }
        if events.contains(.writable) && !flush(into: end) { return finish(reset: true) }
        if reading[end] && !hasPending(end) && !events.isDisjoint(with: [.readable, .hangUp]) {
            let outcome = read(end)
            switch outcome {
            case .failed: return finish(reset: true)
            case .waiting: break
            case .ended:
                reading[end] = false
            case .read, .lastRead:
                if case .lastRead = outcome { reading[end] = false }
                if !flush(into: other) { return finish(reset: true) }
            }
        }
        for side in 0..<2 where !reading[side] && !hasPending(side) && !shutDown[1 - side] {
            shutDown[1 - side] = true
            if framed == 1 - side {
                // The end of input as a piece: a port-forward would close both directions at a shutdown.
                if buffers[side].isEmpty { buffers[side] = [UInt8](repeating: 0, count: StreamFraming.headerSize) }
                buffers[side].replaceSubrange(0..<StreamFraming.headerSize, with: StreamFraming.end)
                (filled[side], taken[side]) = (StreamFraming.headerSize, 0)
                if !flush(into: 1 - side) { return finish(reset: true) }
            } else {
                try? Sockets.shutdownOutput(ends[1 - side].raw)  // a peer already gone: the reads say so
            }
        }
        if !reading[0] && !reading[1] && !hasPending(0) && !hasPending(1) { return finish(reset: false) }
        for side in 0..<2 { update(side) }
    }

    /// `lastRead`: bytes, and the end of that end's input with them.
    private enum Read { case read, lastRead, waiting, ended, failed }

    /// Whether bytes from end i still wait for the other end.
    private func hasPending(_ end: Int) -> Bool { taken[end] < filled[end] }

    private func read(_ end: Int) -> Read {
        // Bytes for a framed end are read behind room for their piece's header.
        let headroom = framed == 1 - end ? StreamFraming.headerSize : 0
        if buffers[end].isEmpty { buffers[end] = [UInt8](repeating: 0, count: headroom + Self.pieceSize) }
        do throws(SystemCallError) {
            var count = try Sockets.receive(ends[end].raw, into: &buffers[end], at: headroom)
            if framed == end {
                // Closed before its sender's end: the connection was cut, and is passed on as a reset.
                guard count > 0 else { return reader.ended ? .ended : .failed }
                do throws(StreamFraming.Reader.Failure) {
                    count = try reader.extract(&buffers[end], count: count)
                } catch {
                    return .failed
                }
                (filled[end], taken[end]) = (count, 0)
                counts[end] += count
                if reader.ended { return count > 0 ? .lastRead : .ended }
                return count > 0 ? .read : .waiting
            }
            guard count > 0 else {
                (filled[end], taken[end]) = (0, 0)
                return .ended
            }
            if headroom > 0 { StreamFraming.writeDataHeader(count: count, into: &buffers[end]) }
            (filled[end], taken[end]) = (headroom + count, 0)
            counts[end] += count
            return .read
        } catch {
            return error.errno == .resourceTemporarilyUnavailable || error.errno == .interrupted ? .waiting : .failed
        }
    }

    /// Writes what the other end brought into `end`; false when `end` failed.
    private func flush(into end: Int) -> Bool {
        let source = 1 - end
        while hasPending(source) {
            do throws(SystemCallError) {
                taken[source] += try Sockets.send(ends[end].raw, buffers[source][taken[source]..<filled[source]])
            } catch {
                return error.errno == .resourceTemporarilyUnavailable || error.errno == .interrupted
            }
        }
        return true
    }

    /// Reads an end while it may bring bytes and the other has taken the last ones; writes to it while the
    /// other end's bytes wait.
    private func update(_ end: Int) {
        var wanted: EventLoop.Events = []
        if reading[end] && !hasPending(end) { wanted.insert(.readable) }
        if hasPending(1 - end) { wanted.insert(.writable) }
        defer { interests[end] = wanted }
        if let registration = registrations[end] {
            if wanted.isEmpty {
                // Nothing to do with it until the other end moves; epoll would still report its hang-up.
                loop.deregister(registration)
                registrations[end] = nil
            } else if wanted != interests[end] {
                loop.change(registration, to: wanted)
            }
        } else if !wanted.isEmpty {
            do {
                registrations[end] = try loop.register(ends[end].raw, for: wanted) { [self] in ready(end, $0) }
            } catch {
                finish(reset: true)
            }
        }
    }

    private func finish(reset: Bool) {
        guard let finished else { return }
        self.finished = nil
        for end in 0..<2 {
            if let registration = registrations[end] { loop.deregister(registration) }
            registrations[end] = nil
            // A failed end's peer learns it as a reset, as it would from the far end directly: now for TCP
            // (connect with AF_UNSPEC), and at the close for any socket that cannot be disconnected.
            if reset {
                try? Sockets.resetOnClose(ends[end].raw)  // best effort: a socket that failed resets anyway
                try? Sockets.disconnect(ends[end].raw)  // EINVAL for a unix socket: its close ends it
            }
        }
        finished(counts[0], counts[1])
    }
}
