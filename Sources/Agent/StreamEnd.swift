import AgentProtocol
import NIOCore
import NIOPosix
import Synchronization

/// One end of a byte stream the agent relays: the first handler of a channel's pipeline, so that bytes
/// pass any message codec by. What it reads goes to `onEvent` on the channel's event loop; `write`,
/// `flush`, `closeOutput`, `close` and `setPaused` may be called from any thread, and are carried out on
/// that loop. `glue` joins two ends (on the same loop or not) with backpressure and half-close. A framed end
/// (a link connection, which may pass a port-forward that carries no half-close) speaks `StreamFraming`:
/// its pieces are unwrapped as they are read, what is written to it is wrapped, and its ends of input and
/// output are pieces; closed before its client's end, it was cut, and the other end is reset.
final class StreamEnd: ChannelDuplexHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Event {
        case bytes(ByteBuffer)
        case readComplete
        /// The peer closed its side (half-close).
        case inputClosed
        /// A framed end closed before its peer's end: the other end is reset, as the cut would have done.
        case cut
        case closed
        /// The channel can take more again.
        case writable
    }

    let channel: any Channel
    let framed: Bool
    var loop: any EventLoop { channel.eventLoop }
    /// What the end knows and does, on its channel's loop only (the box checks it).
    private let state: NIOLoopBoundBox<State>
    /// Bytes read from the channel, for the log (read from the other end's loop).
    private let read = Atomic<Int>(0)
    var bytesRead: Int { read.load(ordering: .relaxed) }

    private struct State {
        var onEvent: @Sendable (Event) -> Void
        var context: ChannelHandlerContext?
        var paused = false
        var readPending = false
        /// What came while the end was held (`hold`).
        var held: [Event] = []
        var reader = StreamFraming.Reader()
        /// A framed end: whether its end piece went out.
        var endSent = false
        /// Whether the channel failed (a reset, an error) rather than ended.
        var failed = false
    }

    /// From any thread: the end does nothing until `attach` puts it in its channel's pipeline.
    private init(_ channel: any Channel, framed: Bool = false, _ onEvent: @escaping @Sendable (Event) -> Void) {
        self.channel = channel
        self.framed = framed
        state = .makeBoxSendingValue(State(onEvent: onEvent), eventLoop: channel.eventLoop)
    }

    /// Adds the end first in `channel`'s pipeline (on its loop) and starts reading.
    static func install(
        on channel: any Channel, framed: Bool = false, _ onEvent: @escaping @Sendable (Event) -> Void
    ) -> StreamEnd {
        let end = StreamEnd(channel, framed: framed, onEvent)
        end.attach(closingOnFailure: [channel])
        return end
    }

    /// Relays `first` and `second` to each other; `ended` runs once both are closed, with the bytes each read.
    /// `secondIsFramed`: `second` is a link connection that speaks StreamFraming.
    static func glue(
        _ first: any Channel, _ second: any Channel, secondIsFramed: Bool = false,
        ended: @escaping @Sendable (_ firstRead: Int, _ secondRead: Int) -> Void = { _, _ in }
    ) {
        glue(hold(first), second, secondIsFramed: secondIsFramed, ended: ended)
    }

    /// `glue` for an end that holds what its channel brought meanwhile (`hold`).
    static func glue(
        _ first: StreamEnd, _ second: any Channel, secondIsFramed: Bool = false,
        ended: @escaping @Sendable (_ firstRead: Int, _ secondRead: Int) -> Void = { _, _ in }
    ) {
        let pair = Pair(first, StreamEnd(second, framed: secondIsFramed) { _ in }, ended: ended)
        pair.second.release(to: pair.relay(from: pair.second, to: pair.first))
        pair.second.attach(closingOnFailure: [first.channel, second])
        first.release(to: pair.relay(from: pair.first, to: pair.second))
    }

    /// An end on `channel` from now on, holding what the channel brings until `glue` joins it: a stolen
    /// connection's client may send, and even end its input, before anyone takes it, and NIO reads what is
    /// left at an end of input whether asked to or not. At most one read is held: reading waits meanwhile.
    static func hold(_ channel: any Channel) -> StreamEnd {
        let end = StreamEnd(channel) { _ in }
        end.onLoop { end in
            end.state.value.paused = true
            end.state.value.onEvent = { [unowned end] event in end.state.value.held.append(event) }
        }
        end.attach(closingOnFailure: [channel])
        return end
    }

    /// On the loop: what was held goes to `onEvent`, then what comes; reading goes on.
    private func release(to onEvent: @escaping @Sendable (Event) -> Void) {
        onLoop { end in
            end.state.value.onEvent = onEvent
            let held = end.state.value.held
            end.state.value.held = []
            for event in held { onEvent(event) }
            end.setPaused(false)
        }
    }

    /// At once when on the channel's loop: bytes read before the end is in place would reach the codec.
    private func attach(closingOnFailure channels: [any Channel]) {
        onLoop { end in
            do {
                try end.channel.syncOptions?.setOption(.allowRemoteHalfClosure, value: true)
                try end.channel.pipeline.syncOperations.addHandler(end, position: .first)
                try end.channel.syncOptions?.setOption(.autoRead, value: true)
            } catch {
                for channel in channels { channel.close(promise: nil) }
            }
        }
    }

    /// Two glued ends, and how many of them have closed (`lock`).
    final class Pair: Sendable {
        let first: StreamEnd
        let second: StreamEnd
        let ended: @Sendable (Int, Int) -> Void
        private let lock = Mutex<Int>(0)

        init(_ first: StreamEnd, _ second: StreamEnd, ended: @escaping @Sendable (Int, Int) -> Void) {
            self.first = first
            self.second = second
            self.ended = ended
        }

        func relay(from source: StreamEnd, to target: StreamEnd) -> @Sendable (Event) -> Void {
            { [unowned source, target] event in
                switch event {
                case .bytes(let buffer):
                    target.write(buffer)
                    if !target.channel.isWritable { source.pause() }
                case .readComplete: target.flush()
                case .inputClosed: target.closeOutput()
                case .cut: target.reset()
                case .writable: target.setPaused(false)
                case .closed:
                    // A failed end's far side learns it as a cut: no end piece, which its reader takes as one.
                    if source.state.value.failed && target.framed { target.cutOff() } else { target.close() }
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
        onLoop { end in
            let context = end.state.value.context
            if end.framed {
                let header = ByteBuffer(bytes: StreamFraming.dataHeader(count: buffer.readableBytes))
                context?.write(end.wrapOutboundOut(header), promise: nil)
            }
            context?.write(end.wrapOutboundOut(buffer), promise: nil)
            if flush { context?.flush() }
        }
    }

    func flush() { onLoop { $0.state.value.context?.flush() } }

    /// The end of output: a shutdown, or on a framed end a piece (the connection stays open for the rest).
    func closeOutput() {
        onLoop { end in
            guard end.framed else { return end.afterWrites { $0.close(mode: .output, promise: nil) } }
            end.sendEnd(promise: nil)
        }
    }

    /// On the loop: `body` once what was written so far is out. A channel whose input has ended closes whole
    /// at a close of its output, and NIO drops the writes still pending at a close.
    private func afterWrites(_ body: @escaping @Sendable (ChannelHandlerContext) -> Void) {
        guard let context = state.value.context else { return }
        let written = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(ByteBuffer()), promise: written)
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)  // the write completes on this loop
        written.futureResult.whenComplete { _ in body(bound.value) }
    }

    /// Closes; a framed end sends its end piece first, if it has not (a channel that closes whole, as NIO
    /// closes one whose input ends after its output did, ended cleanly).
    func close() {
        onLoop { end in
            if end.framed { end.sendEnd(promise: nil) }
            end.afterWrites { $0.close(promise: nil) }
        }
    }

    /// Closes a framed end without its end piece: the far side takes it as a cut.
    func cutOff() { onLoop { $0.state.value.context?.close(promise: nil) } }

    /// On the loop: the end piece, once.
    private func sendEnd(promise: EventLoopPromise<Void>?) {
        guard !state.value.endSent, let context = state.value.context else { return promise?.succeed(()) ?? () }
        state.value.endSent = true
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: StreamFraming.end)), promise: promise)
    }

    /// Closes with a reset (SO_LINGER 0), as a connection whose far end was cut.
    func reset() {
        onLoop { end in
            guard let provider = end.channel as? any SocketOptionProvider else { return end.cutOff() }
            provider.setSoLinger(linger(l_onoff: 1, l_linger: 0)).whenComplete { _ in end.cutOff() }
        }
    }

    func setPaused(_ paused: Bool) {
        onLoop { end in
            end.state.value.paused = paused
            if !paused && end.state.value.readPending {
                end.state.value.readPending = false
                end.state.value.context?.read()
            }
        }
    }

    fileprivate func onLoop(_ body: @escaping @Sendable (StreamEnd) -> Void) {
        if loop.inEventLoop { body(self) } else { loop.execute { body(self) } }
    }

    /// On the loop: stop reading until `setPaused(false)`.
    private func pause() { state.value.paused = true }

    // MARK: The channel's events

    func handlerAdded(context: ChannelHandlerContext) { state.value.context = context }

    func handlerRemoved(context: ChannelHandlerContext) { state.value.context = nil }

    private func emit(_ event: Event) { state.value.onEvent(event) }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        guard framed else {
            read.add(buffer.readableBytes, ordering: .relaxed)
            return emit(.bytes(buffer))
        }
        guard !state.value.reader.ended else { return context.close(promise: nil) }  // bytes after the end
        var bytes = buffer.readBytes(length: buffer.readableBytes) ?? []
        do throws(StreamFraming.Reader.Failure) {
            let count = try state.value.reader.extract(&bytes, count: bytes.count)
            if count > 0 {
                read.add(count, ordering: .relaxed)
                emit(.bytes(ByteBuffer(bytes: bytes[..<count])))
            }
            if state.value.reader.ended { emit(.inputClosed) }
        } catch {
            emit(.cut)
            context.close(promise: nil)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) { emit(.readComplete) }

    func channelInactive(context: ChannelHandlerContext) {
        emit(.closed)
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, case .inputClosed = event {
            // A framed end's input ends with its end piece; a close before that is a cut.
            if !framed { emit(.inputClosed) } else if !state.value.reader.ended { emit(.cut) }
        }
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
