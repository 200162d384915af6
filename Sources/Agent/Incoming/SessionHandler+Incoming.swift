import AgentProtocol
import Incoming
import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

/// Incoming traffic on the link: `listen` subscribes a port of the pod for the session. A stolen
/// connection is relayed on the link, taken with `takeIncoming`; mirrored ones' copies
/// come on the listen stream itself.
extension SessionHandler {
    func listen(_ id: UInt32, _ subscription: IncomingSubscription, context: ChannelHandlerContext) {
        guard isInTargetNetwork(id, context: context) else { return }
        guard let netfilter = registry.netfilter else {
            return reply(
                context, id,
                .failure(
                    errno: EOPNOTSUPP,
                    message: "incoming traffic needs nft (Debian's nftables) beside the agent, and it is not installed")
            )
        }
        let channel = context.channel
        let session =
            incoming
            ?? IncomingSession(session: number, link: channel, registry: registry, netfilter: netfilter, logger: logger)
        if incoming == nil { watchForSilence(context: context) }
        incoming = session
        pool.submit { _ in
            channel.writeAndFlush(Message.response(id: id, session.subscribe(id, subscription)), promise: nil)
        }
    }

    /// How long a session with taken ports may stay silent (its client pings every 5 s) before it ends.
    static let silenceLimit = TimeAmount.seconds(15)

    /// Ends the session when its client stops pinging: a link that died without a close (a network
    /// partition, a frozen laptop) must not hold the pod's ports.
    func watchForSilence(context: ChannelHandlerContext) {
        let channel = context.channel
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)  // the task runs on this loop
        silenceCheck = context.eventLoop.scheduleRepeatedTask(initialDelay: .seconds(5), delay: .seconds(5)) { _ in
            guard NIODeadline.now() - handler.value.lastHeard > Self.silenceLimit else { return }
            handler.value.logger.warning(
                "nothing heard from the client for 15 s: ending its session, and the pod's ports are its own again")
            channel.close(promise: nil)
        }
    }

    func takeIncoming(_ id: UInt32, _ connection: UInt64, context: ChannelHandlerContext) {
        guard let waiting = registry.remove(connection) else {
            return reply(
                context, id,
                .failure(
                    errno: ENOENT,
                    message:
                        "connection \(connection) is not waiting any more (after \(IncomingRegistry.takeTimeout.nanoseconds / 1_000_000_000) s it goes to the pod's application)"
                ))
        }
        guard let stream = openStream(id, context: context) else { return waiting.abandon(connection) }
        waiting.take(connection, stream)
    }
}
