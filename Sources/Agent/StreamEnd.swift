import NIOCore
import Synchronization

/// One end of a byte stream the agent relays: the first handler of a channel's pipeline, so that bytes
/// pass any message codec by. What it reads goes to `onEvent` on the channel's event loop; `write`,
/// `flush`, `closeOutput`, `close` and `setPaused` may be called from any thread, and are carried out on
/// that loop. `glue` joins two ends (on the same loop or not) with backpressure and half-close.
final class StreamEnd: ChannelDuplexHandler, @unchecked Sendable {  // mutable state confined to `loop`
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Event {
        case bytes(ByteBuffer)
        case readComplete
        /// The peer closed its side (half-close).
        case inputClosed
        case closed
        /// The channel can take more again.
        case writable
    }

    let channel: any Channel
    var loop: any EventLoop { channel.eventLoop }
    /// Set before the handler is added, never after.
    var onEvent: @Sendable (Event) -> Void = { _ in }
    private var context: ChannelHandlerContext?
    private var paused = false
    private var readPending = false
    /// Bytes read from the channel, for the log.
    private(set) var bytesRead = 0

    init(_ channel: any Channel) { self.channel = channel }

    /// Adds the end first in `channel`'s pipeline (on its loop) and starts reading.
    static func install(on channel: any Channel, _ onEvent: @escaping @Sendable (Event) -> Void) -> StreamEnd {
        let end = StreamEnd(channel)
        end.onEvent = onEvent
        end.attach(closingOnFailure: [channel])
        return end
    }

    /// Relays `first` and `second` to each other; `ended` runs once both are closed, with the bytes each read.
    static func glue(
        _ first: any Channel, _ second: any Channel,
        ended: @escaping @Sendable (_ firstRead: Int, _ secondRead: Int) -> Void = { _, _ in }
    ) {
        let pair = Pair(StreamEnd(first), StreamEnd(second), ended: ended)
        pair.first.onEvent = pair.relay(from: pair.first, to: pair.second)
        pair.second.onEvent = pair.relay(from: pair.second, to: pair.first)
        pair.first.attach(closingOnFailure: [first, second])
        pair.second.attach(closingOnFailure: [first, second])
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
                case .writable: target.setPaused(false)
                case .closed:
                    target.close()
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
            end.context?.write(end.wrapOutboundOut(buffer), promise: nil)
            if flush { end.context?.flush() }
        }
    }

    func flush() { onLoop { $0.context?.flush() } }
    func closeOutput() { onLoop { $0.context?.close(mode: .output, promise: nil) } }
    func close() { onLoop { $0.context?.close(promise: nil) } }

    func setPaused(_ paused: Bool) {
        onLoop { end in
            end.paused = paused
            if !paused && end.readPending {
                end.readPending = false
                end.context?.read()
            }
        }
    }

    private func onLoop(_ body: @escaping @Sendable (StreamEnd) -> Void) {
        if loop.inEventLoop { body(self) } else { loop.execute { body(self) } }
    }

    /// On the loop: stop reading until `setPaused(false)`.
    private func pause() { paused = true }

    // MARK: The channel's events

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        bytesRead += buffer.readableBytes
        onEvent(.bytes(buffer))
    }

    func channelReadComplete(context: ChannelHandlerContext) { onEvent(.readComplete) }

    func channelInactive(context: ChannelHandlerContext) {
        onEvent(.closed)
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, case .inputClosed = event { onEvent(.inputClosed) }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { onEvent(.writable) }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if paused { readPending = true } else { context.read() }
    }
}
