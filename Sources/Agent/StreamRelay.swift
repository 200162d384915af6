import AgentLink
import AgentProtocol
import NIOCore
import NIOPosix

#if canImport(Glibc)
    import Glibc
#endif

/// Connections relayed on the link, for clients that cannot take a socket from the agent (they reach it
/// through a port-forward): `connect` makes a connection from the target's network namespace, `take
/// incoming` takes a stolen one, and from then on the connection's bytes travel as the request's chunks, both
/// ways, with half-close and a window each way (`LinkStreamEnd`).
extension SessionHandler {
    func connectStream(_ id: UInt32, to address: [UInt8], context: ChannelHandlerContext) {
        guard isInTargetNetwork(id, context: context) else { return }
        guard let destination = Self.socketAddress(address) else {
            return reply(context, id, .failure(errno: EAFNOSUPPORT, message: "not an IPv4 or IPv6 address"))
        }
        // The connection completes on this loop, where the handler and its context live.
        let bound = NIOLoopBound((handler: self, context: context), eventLoop: context.eventLoop)
        ClientBootstrap(group: context.eventLoop)
            .connectTimeout(.seconds(30))
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .connect(to: destination)
            .whenComplete { result in
                let (handler, context) = bound.value
                switch result {
                case .failure(let error):
                    let code = Self.errno(of: error)
                    handler.logger.info("connection to \(destination) failed: \(error)")
                    handler.reply(context, id, .failure(errno: code, message: "\(error)"))
                case .success(let outbound):
                    guard let stream = handler.openStream(id, context: context) else {
                        outbound.close(promise: nil)
                        return
                    }
                    StreamEnd.glue(StreamEnd.hold(outbound), stream)
                    handler.logger.debug("connection to \(destination)")
                }
            }
    }

    /// Answers `done` and opens the request's stream; nil when the session is gone.
    func openStream(_ id: UInt32, context: ChannelHandlerContext) -> LinkStreamEnd? {
        guard state == .open else { return nil }
        reply(context, id, .done)
        let session = NIOLoopBound(self, eventLoop: context.eventLoop)  // the stream calls back on this loop
        let stream = LinkStreamEnd(id: id, channel: context.channel) { session.value.streams[id] = nil }
        streams[id] = stream
        return stream
    }

    /// Whether the agent is in the target's network namespace, where the pod's traffic is; answers the
    /// request ENETUNREACH when it is not.
    func isInTargetNetwork(_ id: UInt32, context: ChannelHandlerContext) -> Bool {
        guard case .process(let pid) = configuration.target.spec, !Target.sharesNamespace("net", with: pid) else {
            return true
        }
        reply(
            context, id,
            .failure(
                errno: ENETUNREACH,
                message:
                    "this agent is not in the target's network namespace; run it in the pod (an ephemeral container)"
            ))
        return false
    }

    /// The errno a failed connect means, as the program's own connect would have returned it.
    static func errno(of error: any Error) -> Int32 {
        if let error = error as? IOError { return error.errnoCode }
        if let error = error as? NIOConnectionError, let first = error.connectionErrors.first?.error as? IOError {
            return first.errnoCode
        }
        if case ChannelError.connectTimeout = error { return ETIMEDOUT }
        return ECONNREFUSED
    }

    /// A sockaddr_in or sockaddr_in6, as the program passed it to connect.
    static func socketAddress(_ bytes: [UInt8]) -> SocketAddress? {
        guard bytes.count >= 8 else { return nil }
        let family = Int32(bytes[0]) | Int32(bytes[1]) << 8
        let port = Int(bytes[2]) << 8 | Int(bytes[3])
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        switch family {
        case AF_INET:
            _ = inet_ntop(AF_INET, Array(bytes[4..<8]), &text, socklen_t(text.count))
        case AF_INET6 where bytes.count >= 24:
            _ = inet_ntop(AF_INET6, Array(bytes[8..<24]), &text, socklen_t(text.count))
        default:
            return nil
        }
        return try? SocketAddress(
            ipAddress: String(decoding: text.prefix { $0 != 0 }.map(UInt8.init), as: UTF8.self), port: port)
    }
}
