import AgentProtocol
import NIOCore

/// Frames in, messages out, on a NIO pipeline. The parsing itself is `Frame.parse`, pure and fuzzed.
public struct MessageDecoder: ByteToMessageDecoder {
    public typealias InboundOut = Message

    public init() {}

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        let parsed = try buffer.withUnsafeReadableBytes { try Frame.parse($0) }
        guard case .message(let message, let consumed) = parsed else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: consumed)
        context.fireChannelRead(wrapInboundOut(message))
        return .continue
    }
}

/// Messages in, frames out.
public struct MessageEncoder: MessageToByteEncoder {
    public typealias OutboundIn = Message

    public init() {}

    public func encode(data: Message, out: inout ByteBuffer) throws {
        var bytes: [UInt8] = []
        Frame.encode(data, into: &bytes)
        out.writeBytes(bytes)
    }
}

extension ChannelPipeline.SynchronousOperations {
    /// The framing both ends use.
    public func addMessageCodec() throws {
        try addHandler(ByteToMessageHandler(MessageDecoder()))
        try addHandler(MessageToByteHandler(MessageEncoder()))
    }
}
