import AgentProtocol
import Incoming
import Logging
import NIOCore
import NIOPosix
import Synchronization
import SyscallDecoding

import enum LinuxSystem.Clock
import struct LinuxSystem.OwnedDescriptor
import class LinuxSystem.SharedDescriptor
import enum LinuxSystem.Sockets
import struct LinuxSystem.SystemCallError

#if canImport(Glibc)
    import Glibc
#endif

/// One session's incoming traffic: the ports it listens on in the pod, its netfilter table, the listeners
/// that take stolen connections, and the copy of mirrored ones. Everything it set up goes when it ends.
///
/// `subscribe`, `unsubscribe` and `end` run nft and wait for binds: call them from the thread pool.
final class IncomingSession: Sendable {
    struct Subscription {
        let request: UInt32
        let mode: IncomingSubscription.Mode
        let filter: HTTPFilter?
        /// A stolen port's listening sockets.
        var listeners: [Listener] = []
    }

    /// One family's listening socket of a stolen port (IPv6 only, and IPv4, on one port number, so that a
    /// program of either family can be handed sockets of its own).
    struct Listener {
        let family: Int32
        let socket: SharedDescriptor
        /// Accepts the stolen connections here, on a copy of `socket`; gone once a client took `socket` over.
        var channel: (any Channel)?
        /// Or, for a port stolen by filter, the agent's `StolenAccepts` does, until this is called.
        var stopAccepting: (@Sendable () -> Void)? = nil

        /// No more connections are accepted here; `socket` stays, for what is left in its queue.
        func stop() {
            channel?.close(promise: nil)
            stopAccepting?()
        }
    }

    let loop: any EventLoop
    /// The session's number in its agent.
    let number: Int
    let registry: IncomingRegistry
    let netfilter: Netfilter
    let logger: Logger
    /// The session's link connection, where connections are announced and copies sent.
    let link: any Channel
    private let unsent = Atomic<Int>(0)
    private let state: Mutex<State>

    private struct State {
        var plan: NetfilterPlan
        var subscriptions: [UInt16: Subscription] = [:]
        var capture: MirrorCapture?
        /// Connections offered and not taken yet, with the listen request they were announced on.
        var waiting: [UInt64: UInt32] = [:]
        var ended = false
    }

    init(session: Int, link: any Channel, registry: IncomingRegistry, netfilter: Netfilter, logger: Logger) {
        self.link = link
        number = session
        loop = link.eventLoop
        self.registry = registry
        self.netfilter = netfilter
        self.logger = logger
        state = Mutex(State(plan: NetfilterPlan(agent: registry.shares.agent, session: session)))
    }

    // MARK: Subscriptions

    /// Takes `subscription.port` in the pod; `done`, or a failure that says why.
    func subscribe(_ request: UInt32, _ subscription: IncomingSubscription) -> Response {
        let port = subscription.port
        let filter: HTTPFilter?
        do {
            filter = try HTTPFilter(headerPattern: subscription.headerPattern, pathPattern: subscription.pathPattern)
        } catch {
            return .failure(errno: EINVAL, message: error.description)
        }
        do {
            try registry.prepare(on: loop, logger: logger)
        } catch {
            return .failure(errno: EIO, message: "cannot tell the pod's other agents of the port: \(error)")
        }
        guard self.subscription(for: port) == nil else {
            return .failure(errno: EADDRINUSE, message: "this session takes port \(port) already")
        }
        // Claimed before the session's lock is taken: a claim waits for the pod's other agents, whose
        // deliveries to this session need that lock meanwhile.
        let claim = subscription.mode == .steal ? makeClaim(subscription) : nil
        var earlierClaims = 0
        if let claim {
            switch registry.shares.claim(claim, by: self) {
            case .after(let count): earlierClaims = count
            case .refused(let refusal): return .failure(errno: EADDRINUSE, message: refusal)
            }
        }
        let response = state.withLock { state -> Response in
            guard !state.ended else { return .failure(errno: ECONNRESET, message: "the session has ended") }
            var next = state.plan
            var listeners: [Listener] = []
            do {
                switch subscription.mode {
                case .steal:
                    let bound = try bindListeners(podPort: port, family: subscription.family, filtered: filter != nil)
                    listeners = bound.listeners
                    if !next.hasStolen { next.stealOrder = earlierClaims }
                    next.steals[port] = bound.port
                case .mirror:
                    if state.capture == nil { state.capture = try MirrorCapture.open(session: self) }
                    next.logGroup = state.capture!.group
                    next.mirrors.insert(port)
                }
                try netfilter.apply(next, after: state.plan)
            } catch {
                for listener in listeners { listener.stop() }
                return .failure(errno: EPERM, message: Self.explain(error))
            }
            state.plan = next
            state.subscriptions[port] = Subscription(
                request: request, mode: subscription.mode, filter: filter, listeners: listeners)
            if !listeners.isEmpty && filter == nil { registry.stealing(port, by: self) }
            let how =
                subscription.mode == .mirror
                ? "mirrored" : filter == nil ? "stolen" : "stolen for matching HTTP requests"
            logger.info("port \(port) of the pod is \(how) for this session (netfilter table \(state.plan.table))")
            return .done
        }
        if let claim, response != .done { registry.shares.release(port, by: claim.owner) }
        return response
    }

    private func makeClaim(_ subscription: IncomingSubscription) -> PortClaim {
        PortClaim(
            owner: owner, port: subscription.port, registeredAt: Clock.monotonic(),
            headerPattern: subscription.headerPattern, pathPattern: subscription.pathPattern,
            developer: subscription.developer.isEmpty ? "an unnamed developer" : subscription.developer,
            table: state.withLock { $0.plan.table })
    }

    /// The listen request `request` was cancelled (the program stopped listening): the port goes back to
    /// the pod, and so do its connections waiting to be taken.
    func unsubscribe(request: UInt32) {
        let abandoned = state.withLock { state -> [UInt64] in
            guard let (port, subscription) = state.subscriptions.first(where: { $0.value.request == request }) else {
                return []
            }
            state.subscriptions[port] = nil
            var next = state.plan
            next.steals[port] = nil
            next.mirrors.remove(port)
            do {
                try netfilter.apply(next, after: state.plan)
                state.plan = next
            } catch {
                logger.warning("could not give port \(port) back: \(error)")
            }
            registry.stoppedStealing(port, by: self)
            registry.shares.release(port, by: owner)
            for listener in subscription.listeners {
                listener.stop()
                passThroughWaiting(listener.socket, podPort: port)
            }
            logger.info("port \(port) of the pod is its own again")
            let ids = state.waiting.filter { $0.value == request }.map(\.key)
            for id in ids { state.waiting[id] = nil }
            return ids
        }
        for id in abandoned { registry.remove(id)?.abandon(id) }
    }

    /// The session is over: rules, listeners and the copy go, and connections still waiting to be taken go
    /// to the pod's application.
    func end() {
        let (abandoned, stopped) = state.withLock { state -> ([UInt64], MirrorCapture?) in
            guard !state.ended else { return ([], nil) }
            state.ended = true
            if !state.plan.isEmpty {
                do {
                    try netfilter.run(["-f", "-"], script: NetfilterPlan.deletion(of: state.plan.table))
                    logger.info(
                        "removed the netfilter table \(state.plan.table): the pod serves its ports itself again")
                } catch {
                    logger.warning("could not remove the netfilter table \(state.plan.table): \(error)")
                }
            }
            for (port, subscription) in state.subscriptions {
                registry.stoppedStealing(port, by: self)
                registry.shares.release(port, by: owner)
                for listener in subscription.listeners {
                    listener.stop()
                    passThroughWaiting(listener.socket, podPort: port)
                }
            }
            state.subscriptions = [:]
            defer { state.capture = nil }
            return (Array(state.waiting.keys), state.capture)
        }
        stopped?.stop()
        for id in abandoned { registry.remove(id)?.abandon(id) }
    }

    static func explain(_ error: any Error) -> String {
        let text = "\(error)"
        if text.contains("Operation not permitted") || text.contains("EPERM") {
            return
                "\(text). Incoming traffic needs CAP_NET_ADMIN in the pod (`trace --target` adds it when --incoming is not off)"
        }
        return text
    }

    func subscription(for port: UInt16) -> Subscription? { state.withLock { state in state.subscriptions[port] } }

    /// The session as its claims name it.
    var owner: PortClaim.Owner { PortClaim.Owner(agent: registry.shares.agent, session: UInt32(number)) }

    /// Tells the developer something about their port `port` (on its listen stream).
    func notice(_ port: UInt16, _ note: String) {
        guard let request = subscription(for: port)?.request else { return }
        logger.info("port \(port): \(note)")
        send([.response(id: request, .notice(note))], size: note.utf8.count)
    }

    /// Gives stolen `port`'s listening socket to a client that accepts the pod's connections itself (a
    /// unix-socket client, which then hands the program the pod's socket, with no relay in between). The
    /// agent stops accepting there; connections it had accepted already are announced as before.
    func handOver(port: UInt16, family: Int32) -> OwnedDescriptor? {
        let socket = state.withLock { state -> SharedDescriptor? in
            guard !state.ended, var subscription = state.subscriptions[port], subscription.filter == nil,
                let index = subscription.listeners.firstIndex(where: { $0.family == family })
            else { return nil }
            subscription.listeners[index].channel?.close(promise: nil)
            subscription.listeners[index].channel = nil
            state.subscriptions[port] = subscription
            return subscription.listeners[index].socket
        }
        return try? socket?.descriptor.duplicate()
    }

    /// Connections still queued on a listening socket whose port goes back to the pod (its rules are gone
    /// already, so no more come): to the pod's application, as if they had never been redirected.
    private func passThroughWaiting(_ socket: SharedDescriptor, podPort: UInt16) {
        try? socket.descriptor.setNonBlocking(true)  // cannot fail on a socket the agent holds
        var peer: SyscallDecoding.SocketAddress?
        while let connection = try? Sockets.accept(socket.raw, flags: Int32(SOCK_CLOEXEC.rawValue), peer: &peer) {
            ClientBootstrap(group: loop)
                .channelOption(.autoRead, value: false)
                .channelOption(.allowRemoteHalfClosure, value: true)
                .withConnectedSocket(connection.release())
                .whenSuccess { [self] in
                    passThrough(StreamEnd.hold($0), podPort: podPort, reason: "its port is no longer stolen")
                }
        }
    }

    // MARK: Connections

    /// Registers a stolen connection (or the requests of one) to `port` for the client to take; abandoned
    /// at once when the session no longer takes the port.
    func offer(
        _ port: UInt16, client: Endpoint, on loop: any EventLoop,
        take: @escaping @Sendable (any RelaySide) -> Void, abandon: @escaping @Sendable () -> Void
    ) {
        guard let request = subscription(for: port)?.request else { return abandon() }
        offer(request, client: client, on: loop, take: { take($0) }, abandon: abandon)
    }

    /// Registers a stolen connection for the client to take, and announces it on `request`.
    func offer(
        _ request: UInt32, client: Endpoint, on loop: any EventLoop,
        take: @escaping @Sendable (LinkStreamEnd) -> Void, abandon: @escaping @Sendable () -> Void
    ) {
        let id = registry.add(
            IncomingRegistry.Waiting(
                take: { [self] id, stream in
                    _ = state.withLock { state in state.waiting.removeValue(forKey: id) }
                    take(stream)
                },
                abandon: { [self] id in
                    _ = state.withLock { state in state.waiting.removeValue(forKey: id) }
                    abandon()
                }), on: loop)
        let open = state.withLock { state in
            if !state.ended { state.waiting[id] = request }
            return !state.ended
        }
        guard open else { return registry.remove(id)?.abandon(id) ?? () }
        send([.response(id: request, .incoming(IncomingConnection(id: id, client: client.socketAddress)))], size: 32)
    }

    /// Sends `messages` on the link from any thread, in one hop to its loop and one flush; `size` (about
    /// their bytes) counts in `unsentBytes` until they are written.
    func send(_ messages: [Message], size: Int) {
        guard let last = messages.last else { return }
        unsent.add(size, ordering: .relaxed)
        let written = link.eventLoop.makePromise(of: Void.self)
        written.futureResult.whenComplete { [self] _ in unsent.subtract(size, ordering: .relaxed) }
        link.eventLoop.execute { [link] in
            for message in messages.dropLast() { link.write(message, promise: nil) }
            link.writeAndFlush(last, promise: written)
        }
    }

    /// What `send` was given and the link has not written yet: how far behind the client is.
    var unsentBytes: Int { unsent.load(ordering: .relaxed) }

    /// The listening sockets for the stolen connections of `podPort`, on one port the kernel picks (the
    /// redirect names a port, not a family), shaped for a program of `family`, so that the pod's sockets it
    /// may be handed are of its family: for IPv6, one dual-stack socket (IPv4 clients as ::ffff:a.b.c.d, as
    /// the program's own socket would show them); for IPv4, an IPv4 socket and an IPv6-only one beside it.
    /// IPv4 alone in a pod without IPv6. Each with a NIO listener on a copy of it, or (`filtered`) watched by
    /// the agent's `StolenAccepts`.
    private func bindListeners(podPort: UInt16, family: Int32, filtered: Bool) throws
        -> (listeners: [Listener], port: UInt16)
    {
        var sockets: [(Int32, SharedDescriptor)] = []
        if family == AF_INET6, let dual = try? Self.listeningSocket(family: AF_INET6, port: 0, v6Only: false) {
            sockets = [(AF_INET6, dual)]
        } else {
            for _ in 0..<8 {
                let v4 = try Self.listeningSocket(family: AF_INET, port: 0)
                let port = try Sockets.localAddress(v4.raw).port ?? 0
                do throws(SystemCallError) {
                    sockets = [
                        (AF_INET, v4), (AF_INET6, try Self.listeningSocket(family: AF_INET6, port: port, v6Only: true)),
                    ]
                    break
                } catch {
                    sockets = [(AF_INET, v4)]
                    if error.errno == .addressInUse { continue }  // taken for IPv6: another pair
                    break  // no IPv6 in the pod
                }
            }
        }
        guard let first = sockets.first else { throw IncomingError("no listening socket") }
        let port = try Sockets.localAddress(first.1.raw).port ?? 0
        var listeners: [Listener] = []
        for (family, socket) in sockets {
            if filtered, let accepts = registry.shares.accepts {
                let stop = accepts.watchReadingFirst(socket) { [self] connection, read in
                    sort(connection, podPort: podPort, read: read)
                }
                listeners.append(Listener(family: family, socket: socket, channel: nil, stopAccepting: stop))
                continue
            }
            let channel = try ServerBootstrap(group: loop)
                .childChannelOption(.autoRead, value: false)
                .childChannelOption(.allowRemoteHalfClosure, value: true)
                .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
                .childChannelInitializer { [self] channel in
                    stolen(channel, podPort: podPort)
                    return channel.eventLoop.makeSucceededVoidFuture()
                }
                .withBoundSocket(try socket.descriptor.duplicate().release())
                .wait()
            listeners.append(Listener(family: family, socket: socket, channel: channel))
        }
        return (listeners, port)
    }

    private static func listeningSocket(family: Int32, port: UInt16, v6Only: Bool = true) throws(SystemCallError)
        -> SharedDescriptor
    {
        let socket = SharedDescriptor(
            try Sockets.make(family: family, type: Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)))
        try Sockets.setOption(socket.raw, SO_REUSEADDR, 1)
        if family == AF_INET6 {
            try Sockets.setOption(socket.raw, level: Int32(IPPROTO_IPV6), IPV6_V6ONLY, v6Only ? 1 : 0)
        }
        try Sockets.bind(socket.raw, to: .any(family: family, port: port))
        try Sockets.listen(socket.raw, backlog: 1024)
        return socket
    }

    /// A connection redirected from `podPort`, stolen whole: to the client.
    private func stolen(_ channel: any Channel, podPort: UInt16) {
        guard let client = Endpoint(channel.remoteAddress), let subscription = subscription(for: podPort) else {
            return passThrough(StreamEnd.hold(channel), podPort: podPort, reason: "its port is no longer stolen")
        }
        let end = StreamEnd.hold(channel)
        offer(
            subscription.request, client: client, on: channel.eventLoop,
            take: { [logger] stream in
                StreamEnd.glue(end, stream) { received, sent in
                    logger.info(
                        "incoming connection from \(client) to port \(podPort): stolen, \(received) bytes in, \(sent) out"
                    )
                }
            },
            abandon: { [self] in
                passThrough(end, podPort: podPort, reason: "the developer's program did not take it in time")
            })
    }

    /// A connection to `podPort` stolen by filter, with its first bytes (`StolenAccepts`, on its thread): one
    /// whose first request is for another agent's session goes to that agent whole, so that its requests, most
    /// often all of one developer's, take no hop through this agent; the others are split here.
    func sort(_ connection: consuming OwnedDescriptor, podPort: UInt16, read: [UInt8]) {
        guard let client = (try? Sockets.peerAddress(connection.raw)).flatMap({ Endpoint(socketAddress: $0.bytes) })
        else { return }  // gone already
        if let head = try? HTTPHead.parse(read[...]), let claim = registry.shares.route(podPort, head).winner,
            claim.owner.agent != registry.shares.agent,
            registry.shares.accepts?.handOff(
                connection.raw, to: claim.owner, client: client.socketAddress, port: podPort, read: read) == true
        {
            logger.info(
                "incoming connection from \(client) to port \(podPort): handed whole to the agent of \(claim.developer)'s session, for which its first request is"
            )
            return
        }
        split(connection, podPort: podPort, client: client, read: read)
    }

    /// A connection to `podPort` stolen by filter, split request by request (`HTTPSplitter`), with what was
    /// read of it before (here, or by the agent that handed it over).
    func split(_ connection: consuming OwnedDescriptor, podPort: UInt16, client: Endpoint, read: [UInt8]) {
        ClientBootstrap(group: loop)
            .channelOption(.autoRead, value: false)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .withConnectedSocket(connection.release())
            .whenSuccess { [self] channel in
                guard subscription(for: podPort) != nil else {
                    let end = StreamEnd.hold(channel, read: ByteBuffer(bytes: read))
                    return passThrough(end, podPort: podPort, reason: "its port is no longer stolen")
                }
                let splitter = HTTPSplitter(session: self, podPort: podPort, client: client, read: read)
                try? channel.pipeline.syncOperations.addHandler(splitter)
                try? channel.syncOptions?.setOption(.autoRead, value: true)
            }
    }

    /// Relays a redirected connection (held since it came) to the pod's application, as if it had never been
    /// redirected.
    func passThrough(_ end: StreamEnd, podPort: UInt16, reason: String) {
        let channel = end.channel
        let client = Endpoint(channel.remoteAddress)
        connectToPod(from: channel, podPort: podPort).whenComplete { [logger] result in
            switch result {
            case .success(let upstream):
                StreamEnd.glue(end, StreamEnd.hold(upstream)) { received, sent in
                    logger.info(
                        "incoming connection from \(client.map { "\($0)" } ?? "?") to port \(podPort): passed through (\(reason)), \(received) bytes in, \(sent) out"
                    )
                }
            case .failure(let error):
                logger.warning(
                    "could not pass a connection to port \(podPort) through to the pod's application: \(error)")
                channel.close(promise: nil)
            }
        }
    }

    /// A connection to the pod's application on `podPort`, at the address `channel` reached; marked, so
    /// that no rule of sysmirror's redirects it again.
    func connectToPod(from channel: any Channel, podPort: UInt16) -> EventLoopFuture<any Channel> {
        guard var target = Endpoint(channel.localAddress), target.address.count == 4 || target.address.count == 16
        else {
            return channel.eventLoop.makeFailedFuture(IncomingError("no local address"))
        }
        target.port = podPort
        guard let address = target.nioAddress else {
            return channel.eventLoop.makeFailedFuture(IncomingError("bad address \(target)"))
        }
        return ClientBootstrap(group: channel.eventLoop)
            .connectTimeout(.seconds(10))
            .channelOption(
                .socketOption(.init(rawValue: SO_MARK)), value: SocketOptionValue(NetfilterPlan.passThroughMark)
            )
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelOption(.autoRead, value: false)
            .connect(to: address)
    }
}
