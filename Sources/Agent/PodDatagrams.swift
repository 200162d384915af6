import AgentProtocol
import NIOCore
import NIOPosix
import NameResolution

#if canImport(Glibc)
    import Glibc
#endif

/// UDP and DNS for clients that cannot take a socket from the agent (they reach it through a port-forward):
/// a `datagrams` request gets a UDP socket of the pod's for one program socket, whose datagrams travel as the
/// request's chunks both ways on the session's own connection, so no datagram waits for a stream to be set
/// up; a `resolve` asks the pod's name server every question of a lookup at once (`PodResolver`).
extension SessionHandler {
    func openDatagrams(_ id: UInt32, family: Int32, context: ChannelHandlerContext) {
        guard isInTargetNetwork(id, context: context) else { return }
        guard family == AF_INET || family == AF_INET6 else {
            return reply(context, id, .failure(errno: EAFNOSUPPORT, message: "not IPv4 or IPv6"))
        }
        let session = context.channel
        datagramsWaiting[id] = []
        let bound = NIOLoopBound((handler: self, context: context), eventLoop: context.eventLoop)
        DatagramBootstrap(group: context.eventLoop)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(DatagramsToSession(id: id, session: session))
                }
            }
            .bind(host: family == AF_INET ? "0.0.0.0" : "::", port: 0)
            .whenComplete { result in
                let (handler, context) = bound.value
                // Nil: the client cancelled the request meanwhile.
                let waiting = handler.datagramsWaiting.removeValue(forKey: id)
                switch result {
                case .failure(let error):
                    handler.reply(context, id, .failure(errno: Self.errno(of: error), message: "\(error)"))
                case .success(let channel):
                    guard session.isActive, let waiting else {
                        channel.close(promise: nil)
                        return
                    }
                    handler.datagramSockets[id] = channel
                    handler.reply(context, id, .done)
                    for chunk in waiting { handler.sendDatagram(chunk, on: channel) }
                }
            }
    }

    /// A datagram from the program, sent from the pod's socket; one that cannot go is dropped, as UDP may.
    func sendDatagram(_ chunk: [UInt8], on channel: any Channel) {
        guard let datagram = Datagram(chunk: chunk), let destination = Self.socketAddress(datagram.address) else {
            return
        }
        let envelope = AddressedEnvelope(
            remoteAddress: destination, data: channel.allocator.buffer(bytes: datagram.payload))
        channel.writeAndFlush(envelope, promise: nil)
    }

    /// Asks the pod's name server on the pool, where a lookup may wait for its answers, and answers on the loop.
    func resolve(_ id: UInt32, server: [UInt8], questions: [DNSQuestion], context: ChannelHandlerContext) {
        guard isInTargetNetwork(id, context: context) else { return }
        guard server.count >= 8, [AF_INET, AF_INET6].contains(Int32(server[0]) | Int32(server[1]) << 8) else {
            return reply(context, id, .failure(errno: EAFNOSUPPORT, message: "not an IPv4 or IPv6 name server"))
        }
        let bound = NIOLoopBound((handler: self, context: context), eventLoop: context.eventLoop)
        let loop = context.eventLoop
        pool.submit { _ in
            let answers = PodResolver.answers(server: server, questions: questions)
            loop.execute {
                let (handler, context) = bound.value
                guard handler.state == .open else { return }
                handler.reply(context, id, .answers(answers))
            }
        }
    }
}

/// Hands each datagram the pod's socket receives to the session, as a chunk of its `datagrams` request.
final class DatagramsToSession: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>

    let id: UInt32
    let session: any Channel

    init(id: UInt32, session: any Channel) {
        self.id = id
        self.session = session
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        let source = envelope.remoteAddress.withSockAddr { pointer, size in
            Array(UnsafeRawBufferPointer(start: pointer, count: size))
        }
        let payload = Array(envelope.data.readableBytesView)
        session.writeAndFlush(Message.chunk(id: id, Datagram(address: source, payload: payload).encoded), promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // An ICMP error for an earlier datagram (ECONNREFUSED): UDP reports it and goes on; so does the socket.
    }
}
