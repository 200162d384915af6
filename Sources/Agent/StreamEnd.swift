import AgentProtocol
import NIOCore
import NIOPosix
import Synchronization

/// What one side of a relayed byte stream tells the relay (`StreamEnd.glue`), on that side's loop.
enum RelayEvent: Sendable {
    case bytes(ByteBuffer)
    case readComplete
    /// The peer closed its side (half-close).
    case inputClosed
    /// The side was cut (a reset, a link gone): the other side is reset, as the cut would have done.
    case cut
    case closed
    /// The side can take more again.
    case writable
}

/// One side of a byte stream the agent relays, as `StreamEnd.glue` drives it: a TCP connection
/// (`StreamEnd`), or a connection relayed on a session's link (`LinkStreamEnd`). Its methods may be called
/// from any thread and are carried out on the side's loop, except `pause`, which its own events call.
protocol RelaySide: AnyObject, Sendable {
    var loop: any EventLoop { get }
    /// Bytes the side brought, for the log (read from the other side's loop).
    var bytesRead: Int { get }
    /// On the side's loop: whether it failed (a reset, an error) rather than ended.
    var failed: Bool { get }
    /// Whether it takes more now; once it does not, it tells `writable` when it does again.
    var canTakeMore: Bool { get }
    /// On the side's loop: events go to `onEvent` from now on; returns those that came before.
    func listen(_ onEvent: @escaping @Sendable (RelayEvent) -> Void) -> [RelayEvent]
    func write(_ buffer: ByteBuffer, flush: Bool)
    func flush()
    /// The end of output: the side's input may go on.
    func closeOutput()
    /// Closes once what was written is out.
    func close()
    /// Closes with a reset.
    func reset()
    func setPaused(_ paused: Bool)
    /// On the side's loop: stops reading until `setPaused(false)`.
    func pause()
}

extension RelaySide {
    /// Starts telling `onEvent` what happens (what came meanwhile first), and reading.
    func start(_ onEvent: @escaping @Sendable (RelayEvent) -> Void) {
        onLoop { [self] in
            for event in listen(onEvent) { onEvent(event) }
            setPaused(false)
        }
    }

    /// Runs `body` on the side's loop: now when already there.
    func onLoop(_ body: @escaping @Sendable () -> Void) {
        if loop.inEventLoop { body() } else { loop.execute(body) }
    }
}

/// One end of a byte stream the agent relays, on a channel: the first handler of its pipeline, so that
/// bytes pass any message codec by. What it reads goes to the relay on the channel's event loop. `glue` joins
/// two sides (on the same loop or not) with backpressure and half-close.
final class StreamEnd: ChannelDuplexHandler, RelaySide {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let channel: any Channel
    var loop: any EventLoop { channel.eventLoop }
    /// What the end knows and does, on its channel's loop only (the box checks it).
    private let state: NIOLoopBoundBox<State>
    /// Bytes read from the channel, for the log (read from the other end's loop).
    private let read = Atomic<Int>(0)
    var bytesRead: Int { read.load(ordering: .relaxed) }
    var failed: Bool { state.value.failed }
    var canTakeMore: Bool { channel.isWritable }

    private struct State {
        var onEvent: @Sendable (RelayEvent) -> Void
        var context: ChannelHandlerContext?
        var paused = false
        var readPending = false
        /// What came before `start`.
        var held: [RelayEvent] = []
        /// Whether the channel failed (a reset, an error) rather than ended.
        var failed = false
    }

    /// From any thread: the end does nothing until `attach` puts it in its channel's pipeline.
    private init(_ channel: any Channel) {
        self.channel = channel
        state = .makeBoxSendingValue(State(onEvent: { _ in }), eventLoop: channel.eventLoop)
    }

    /// Relays `first` and `second` to each other; `ended` runs once both are closed, with the bytes each read.
    static func glue(
        _ first: any Channel, _ second: any Channel,
        ended: @escaping @Sendable (_ firstRead: Int, _ secondRead: Int) -> Void = { _, _ in }
    ) {
        glue(hold(first), hold(second), ended: ended)
    }

    /// Relays two sides, each holding what came before (`hold`), to each other.
    static func glue(
        _ first: any RelaySide, _ second: any RelaySide,
        ended: @escaping @Sendable (_ firstRead: Int, _ secondRead: Int) -> Void = { _, _ in }
    ) {
        let pair = Pair(first, second, ended: ended)
        second.start(pair.relay(from: second, to: first))
        first.start(pair.relay(from: first, to: second))
    }

    /// An end on `channel` from now on, holding what the channel brings until `start`: a stolen
    /// connection's client may send, and even end its input, before anyone takes it, and NIO reads what is
    /// left at an end of input whether asked to or not. At most one read is held: reading waits meanwhile.
    /// `read`: what an earlier handler of the channel read past its own part (a delivery's first frame).
    static func hold(_ channel: any Channel, read: ByteBuffer? = nil) -> StreamEnd {
        let end = StreamEnd(channel)
        end.onLoop {
            end.state.value.paused = true
            end.state.value.onEvent = { [unowned end] event in end.state.value.held.append(event) }
            if let read, read.readableBytes > 0 { end.state.value.held = [.bytes(read), .readComplete] }
        }
        end.attach()
        return end
    }

    func listen(_ onEvent: @escaping @Sendable (RelayEvent) -> Void) -> [RelayEvent] {
        state.value.onEvent = onEvent
        defer { state.value.held = [] }
        return state.value.held
    }

    /// At once when on the channel's loop: bytes read before the end is in place would reach the codec.
    private func attach() {
        onLoop { [self] in
            do {
                try channel.syncOptions?.setOption(.allowRemoteHalfClosure, value: true)
                try channel.pipeline.syncOperations.addHandler(self, position: .first)
                try channel.syncOptions?.setOption(.autoRead, value: true)
            } catch {
                channel.close(promise: nil)
            }
        }
    }

    /// Two glued sides, and how many of them have closed (`lock`).
    final class Pair: Sendable {
        let first: any RelaySide
        let second: any RelaySide
        let ended: @Sendable (Int, Int) -> Void
        private let lock = Mutex<Int>(0)

        init(_ first: any RelaySide, _ second: any RelaySide, ended: @escaping @Sendable (Int, Int) -> Void) {
            self.first = first
            self.second = second
            self.ended = ended
        }

        func relay(from source: any RelaySide, to target: any RelaySide) -> @Sendable (RelayEvent) -> Void {
            { [unowned source, target] event in
                switch event {
                case .bytes(let buffer):
                    target.write(buffer, flush: false)
                    if !target.canTakeMore { source.pause() }
                case .readComplete: target.flush()
                case .inputClosed: target.closeOutput()
                case .cut: target.reset()
                case .writable: target.setPaused(false)
                case .closed:
                    // A failed side's far side learns it as a reset, as it would have without the relay.
                    if source.failed { target.reset() } else { target.close() }
                    let both = self.lock.withLock { closed in
                        closed += 1
                        return closed == 2
                    }
                    if both { self.ended(self.first.bytesRead, self.second.bytesRead) }
                }
            }
        }
    }

    // MARK: Any thread

    func write(_ buffer: ByteBuffer, flush: Bool = false) {
        onLoop { [self] in
            let context = state.value.context
            context?.write(wrapOutboundOut(buffer), promise: nil)
            if flush { context?.flush() }
        }
    }

    func flush() { onLoop { [self] in state.value.context?.flush() } }

    func closeOutput() { onLoop { [self] in afterWrites { $0.close(mode: .output, promise: nil) } } }

    /// On the loop: `body` once what was written so far is out. A channel whose input has ended closes whole
    /// at a close of its output, and NIO drops the writes still pending at a close.
    private func afterWrites(_ body: @escaping @Sendable (ChannelHandlerContext) -> Void) {
        guard let context = state.value.context else { return }
        let written = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(ByteBuffer()), promise: written)
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)  // the write completes on this loop
        written.futureResult.whenComplete { _ in body(bound.value) }
    }

    func close() { onLoop { [self] in afterWrites { $0.close(promise: nil) } } }

    /// Closes with a reset (SO_LINGER 0), as a connection whose far end was cut.
    func reset() {
        onLoop { [self] in
            guard let provider = channel as? any SocketOptionProvider else { return channel.close(promise: nil) }
            provider.setSoLinger(linger(l_onoff: 1, l_linger: 0)).whenComplete { [channel] _ in
                channel.close(promise: nil)
            }
        }
    }

    func setPaused(_ paused: Bool) {
        onLoop { [self] in
            state.value.paused = paused
            if !paused && state.value.readPending {
                state.value.readPending = false
                state.value.context?.read()
            }
        }
    }

    func pause() { state.value.paused = true }

    // MARK: The channel's events

    func handlerAdded(context: ChannelHandlerContext) { state.value.context = context }

    func handlerRemoved(context: ChannelHandlerContext) { state.value.context = nil }

    private func emit(_ event: RelayEvent) { state.value.onEvent(event) }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        read.add(buffer.readableBytes, ordering: .relaxed)
        emit(.bytes(buffer))
    }

    func channelReadComplete(context: ChannelHandlerContext) { emit(.readComplete) }

    func channelInactive(context: ChannelHandlerContext) {
        emit(.closed)
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, case .inputClosed = event { emit(.inputClosed) }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        state.value.failed = true
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { emit(.writable) }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if state.value.paused { state.value.readPending = true } else { context.read() }
    }
}
