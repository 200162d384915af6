import LinuxSystem
import UserNotification

#if canImport(Glibc)
    import Glibc
#endif

/// Two connected stream sockets glued together on the serving event loop: what one end reads, the other
/// writes, with back-pressure (an end is not read while the other has not taken its last piece), half-close
/// (an end's EOF becomes a shutdown of the other's output), and resets passed on (an end that fails resets
/// the other). Non-blocking sockets only; no thread.
public final class Relay {
    private let loop: EventLoop
    private let ends: [SharedDescriptor]
    private var interests = [EventLoop.Interest(), EventLoop.Interest()]
    /// What end i brought: its buffer, read into again and again (a relay allocates nothing per piece), how
    /// much of it holds bytes, and how much of those the other end has taken.
    private var buffers: [[UInt8]] = [[], []]
    private var filled = [0, 0]
    private var taken = [0, 0]
    /// Whether end i may still bring bytes.
    private var reading = [true, true]
    /// Whether end i's output was shut down (the other end's EOF passed on).
    private var shutDown = [false, false]
    /// Bytes read from each end.
    private var counts = [0, 0]
    private var finished: ((_ fromFirst: Int, _ fromSecond: Int) -> Void)?
    static let pieceSize = 64 << 10

    private init(loop: EventLoop, ends: [SharedDescriptor], finished: @escaping (Int, Int) -> Void) {
        self.loop = loop
        self.ends = ends
        self.finished = finished
    }

    /// On the loop: relays `first` and `second` (both non-blocking) until both directions end or one fails
    /// (then both are reset before `finished` hears of it); `finished` hears the bytes each end brought. The
    /// descriptors close when their last holder lets go.
    public static func start(
        on loop: EventLoop, _ first: SharedDescriptor, _ second: SharedDescriptor,
        finished: @escaping (_ fromFirst: Int, _ fromSecond: Int) -> Void
    ) {
        let relay = Relay(loop: loop, ends: [first, second], finished: finished)
        for end in 0..<2 {
            relay.update(end)
            if relay.finished == nil { return }
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
            case .read:
                if !flush(into: other) { return finish(reset: true) }
            }
        }
        for side in 0..<2 where !reading[side] && !hasPending(side) && !shutDown[1 - side] {
            shutDown[1 - side] = true
            try? Sockets.shutdownOutput(ends[1 - side].raw)  // a peer already gone: the reads say so
        }
        if !reading[0] && !reading[1] && !hasPending(0) && !hasPending(1) { return finish(reset: false) }
        for side in 0..<2 { update(side) }
    }

    private enum Read { case read, waiting, ended, failed }

    /// Whether bytes from end i still wait for the other end.
    private func hasPending(_ end: Int) -> Bool { taken[end] < filled[end] }

    private func read(_ end: Int) -> Read {
        if buffers[end].isEmpty { buffers[end] = [UInt8](repeating: 0, count: Self.pieceSize) }
        do throws(SystemCallError) {
            let count = try Sockets.receive(ends[end].raw, into: &buffers[end], at: 0)
            guard count > 0 else {
                (filled[end], taken[end]) = (0, 0)
                return .ended
            }
            (filled[end], taken[end]) = (count, 0)
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
        do throws(SystemCallError) {
            try interests[end].want(wanted, on: ends[end].raw, in: loop) { [self] in ready(end, $0) }
        } catch {
            finish(reset: true)
        }
    }

    private func finish(reset: Bool) {
        guard let finished else { return }
        self.finished = nil
        for end in 0..<2 {
            interests[end].end(in: loop)
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
