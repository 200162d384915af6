import AgentProtocol
import NIOCore
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A connection relayed on a session's link (docs/protocol.md, "Relayed connections"), as one side of a
/// relay: what the relay writes to it goes to the client as `chunk`s within the stream's window (the rest
/// waits here for the client's credit), its end of output as an `end`; what the client sends comes out as
/// events. The client is granted more as the other side takes the bytes: while it is paused (the pod's
/// connection cannot take more), nothing is granted, and the client stops sending.
///
/// Lives on the session's loop; the session hands it the client's frames for its id.
final class LinkStreamEnd: RelaySide {
    let id: UInt32
    /// The session's connection.
    let channel: any Channel
    var loop: any EventLoop { channel.eventLoop }
    private let state: NIOLoopBoundBox<State>
    private let read = Atomic<Int>(0)
    /// Whether the window has room and nothing waits for it (read from the other side's loop).
    private let roomy = Atomic<Bool>(true)
    var bytesRead: Int { read.load(ordering: .relaxed) }
    var canTakeMore: Bool { roomy.load(ordering: .relaxed) }
    var failed: Bool { state.value.failed }

    private struct State {
        var onEvent: (@Sendable (RelayEvent) -> Void)?
        var held: [RelayEvent] = []
        var window = StreamWindow()
        /// Bytes for the client beyond the window, until its credit comes.
        var outbox: [ByteBuffer] = []
        var paused = false
        /// Bytes received while paused, granted when the pause ends.
        var withheld = 0
        /// The end of output is due once the outbox is empty.
        var outputEnding = false
        var endSent = false
        /// `close`: the relay is done with the side once its end is out.
        var closing = false
        var clientEnded = false
        /// `closed` was told: the relay is done with this side.
        var closed = false
        var failed = false
        /// Tells the session that the stream is over both ways (its id is free).
        let forget: @Sendable () -> Void
    }

    /// On the session's loop.
    init(id: UInt32, channel: any Channel, forget: @escaping @Sendable () -> Void) {
        self.id = id
        self.channel = channel
        state = .makeBoxSendingValue(State(forget: forget), eventLoop: channel.eventLoop)
    }

    // MARK: The relay's side

    func listen(_ onEvent: @escaping @Sendable (RelayEvent) -> Void) -> [RelayEvent] {
        state.value.onEvent = onEvent
        defer { state.value.held = [] }
        return state.value.held
    }

    func write(_ buffer: ByteBuffer, flush: Bool) {
        onLoop { [self] in
            guard !state.value.closed else { return }
            state.value.outbox.append(buffer)
            drain()
            if flush { channel.flush() }
        }
    }

    func flush() { onLoop { [self] in channel.flush() } }

    func closeOutput() {
        onLoop { [self] in
            state.value.outputEnding = true
            drain()
        }
    }

    func close() {
        onLoop { [self] in
            state.value.outputEnding = true
            state.value.closing = true
            drain()
        }
    }

    /// The other side failed: the client resets its end.
    func reset() {
        onLoop { [self] in
            guard !state.value.closed else { return }
            state.value.outbox = []
            channel.writeAndFlush(
                Message.response(id: id, .failure(errno: ECONNRESET, message: "the pod's end was reset")), promise: nil)
            state.value.failed = true
            state.value.clientEnded = true  // nothing more is wanted from the client
            finish()
        }
    }

    func setPaused(_ paused: Bool) {
        onLoop { [self] in
            state.value.paused = paused
            guard !paused, state.value.withheld > 0 else { return }
            passOn(state.value.withheld)
            state.value.withheld = 0
        }
    }

    func pause() { state.value.paused = true }

    // MARK: The client's frames, on the loop

    func received(_ bytes: [UInt8]) {
        do throws(StreamWindow.Violation) {
            try state.value.window.received(bytes.count)
        } catch {
            return clientCancelled()
        }
        if state.value.closed || state.value.clientEnded {
            return passOn(bytes.count)  // nobody reads them any more: dropped, and the client may go on
        }
        read.add(bytes.count, ordering: .relaxed)
        emit(.bytes(ByteBuffer(bytes: bytes)))
        emit(.readComplete)
        if state.value.paused { state.value.withheld += bytes.count } else { passOn(bytes.count) }
    }

    func credited(_ bytes: Int) {
        do throws(StreamWindow.Violation) {
            try state.value.window.granted(bytes)
        } catch {
            return clientCancelled()
        }
        let wasRoomy = canTakeMore
        drain()
        channel.flush()  // what waited for the credit: nothing else flushes it
        if !wasRoomy && canTakeMore { emit(.writable) }
    }

    func clientEnd() {
        guard !state.value.clientEnded else { return }
        state.value.clientEnded = true
        emit(.inputClosed)
        if state.value.closed { state.value.forget() }
    }

    /// The client reset its end (or broke the window), or the session ended: the other side is reset.
    func clientCancelled() {
        guard !state.value.closed else { return }
        state.value.failed = true
        state.value.clientEnded = true
        state.value.outbox = []
        emit(.cut)
        finish()
    }

    // MARK: Plumbing

    private func emit(_ event: RelayEvent) {
        if let onEvent = state.value.onEvent { onEvent(event) } else { state.value.held.append(event) }
    }

    private func passOn(_ count: Int) {
        if let credit = state.value.window.passOn(count) {
            channel.writeAndFlush(Message.credit(id: id, bytes: credit), promise: nil)
        }
    }

    /// Sends what the window allows, then the end of output when it is due and nothing waits.
    private func drain() {
        while state.value.window.sendable > 0, var buffer = state.value.outbox.first {
            let count = min(buffer.readableBytes, state.value.window.sendable, Frame.chunkSize)
            let bytes = buffer.readBytes(length: count) ?? []
            state.value.window.sent(count)
            channel.write(Message.chunk(id: id, bytes), promise: nil)
            if buffer.readableBytes == 0 {
                state.value.outbox.removeFirst()
            } else {
                state.value.outbox[0] = buffer
            }
        }
        roomy.store(state.value.outbox.isEmpty && state.value.window.sendable > 0, ordering: .relaxed)
        guard state.value.outbox.isEmpty else { return }
        if state.value.outputEnding && !state.value.endSent {
            state.value.endSent = true
            channel.writeAndFlush(Message.end(id: id), promise: nil)
        }
        if state.value.closing { finish() }
    }

    /// Tells the relay this side is closed, once; the session forgets the stream when the client is done too.
    private func finish() {
        guard !state.value.closed else { return }
        state.value.closed = true
        emit(.closed)
        if state.value.clientEnded { state.value.forget() }
    }
}
