import AgentLink
import AgentProtocol
import Logging
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// `sysmirror agent`: accepts sessions on one address and serves each from the target.
public enum AgentServer {
    public struct Configuration: Sendable {
        public var listen: AgentAddress
        public var target: Target
        public var token: SessionToken
        /// The agent exits after this long with no session (and at start, if none comes).
        public var idleTimeout: TimeAmount
        /// At most this many inotify watches for the sessions' file caches (the kernel has its own limit too).
        public var watchLimit: Int

        public init(
            listen: AgentAddress, target: Target, token: SessionToken, idleTimeout: TimeAmount, watchLimit: Int = .max
        ) {
            self.listen = listen
            self.target = target
            self.token = token
            self.idleTimeout = idleTimeout
            self.watchLimit = watchLimit
        }
    }

    /// The default idle timeout: long enough for a CLI that reconnects after a restart of the program,
    /// short enough that an agent left in a pod by a killed CLI goes away soon.
    public static let defaultIdleTimeout: Int64 = 60

    /// Serves until the idle timeout passes with no session; throws when the address cannot be bound.
    public static func run(_ configuration: Configuration, logger: Logger) throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(2, System.coreCount))
        let pool = NIOThreadPool(numberOfThreads: 4)
        pool.start()
        defer {
            try? group.syncShutdownGracefully()
            try? pool.syncShutdownGracefully()
        }
        let finished = group.next().makePromise(of: Void.self)
        let idle = IdleTimer(
            loop: group.next(), timeout: configuration.idleTimeout, logger: logger, onExpiry: { finished.succeed() })
        let counter = SessionCounter()
        let registry = IncomingRegistry(pool: pool, logger: logger)
        // Without inotify (an exhausted instance limit) sessions run without a file cache.
        let watches = try? FileWatches(limit: configuration.watchLimit)
        if watches == nil { logger.warning("no inotify instance: sessions' files are not cached") }
        defer { watches?.close() }
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addMessageCodec()
                    try channel.pipeline.syncOperations.addHandler(
                        SessionHandler(
                            number: counter.next(), configuration: configuration, pool: pool, registry: registry,
                            watches: watches, idle: idle, logger: logger))
                }
            }
        let server: any Channel
        var sockets: SocketService?
        do {
            switch configuration.listen {
            case .unix(let path):
                // Created 0600: only the agent's user may connect (the token is the second lock).
                let previous = umask(0o177)
                defer { umask(previous) }
                server = try bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).wait()
                chmod(path, 0o600)
                // Beside it, the socket channel: a client on this machine can be handed sockets.
                sockets = try SocketService(
                    path: SocketService.path(for: path), target: configuration.target, token: configuration.token,
                    registry: registry, logger: logger)
                try sockets?.start()
            case .tcp(let host, let port):
                server = try bootstrap.bind(host: host, port: port).wait()
            }
        } catch {
            throw AgentStartError(description: "cannot listen on \(configuration.listen): \(error)")
        }
        logger.info(
            "listening on \(configuration.listen), serving \(configuration.target.spec); exits after \(configuration.idleTimeout.nanoseconds / 1_000_000_000) s without a session"
        )
        idle.execute { $0.arm() }
        try? finished.futureResult.wait()
        try? server.close().wait()
        sockets?.stop()
        if case .unix(let path) = configuration.listen { unlink(path) }
    }
}

public struct AgentStartError: Error, Sendable, CustomStringConvertible {
    public let description: String
}

/// Numbers sessions for the log.
final class SessionCounter: Sendable {
    private let value = Atomic<Int>(0)
    func next() -> Int { value.add(1, ordering: .relaxed).newValue }
}

/// Counts open sessions on one event loop, and fires once the count has stayed at zero for the timeout.
final class IdleTimer: Sendable {
    let loop: any EventLoop
    let timeout: TimeAmount
    let logger: Logger
    let onExpiry: @Sendable () -> Void
    /// The open sessions and the expiry waiting to fire; on `loop` only (the box checks it).
    private let state: NIOLoopBoundBox<(sessions: Int, pending: Scheduled<Void>?)>

    init(loop: any EventLoop, timeout: TimeAmount, logger: Logger, onExpiry: @escaping @Sendable () -> Void) {
        self.loop = loop
        self.timeout = timeout
        self.logger = logger
        self.onExpiry = onExpiry
        state = .makeBoxSendingValue((0, nil), eventLoop: loop)
    }

    func execute(_ body: @escaping @Sendable (IdleTimer) -> Void) {
        loop.execute { body(self) }
    }

    func arm() {
        state.value.pending?.cancel()
        state.value.pending = loop.scheduleTask(in: timeout) { [self] in
            logger.info("no session for \(timeout.nanoseconds / 1_000_000_000) s: exiting")
            onExpiry()
        }
    }

    func sessionStarted() {
        state.value.sessions += 1
        state.value.pending?.cancel()
        state.value.pending = nil
    }

    func sessionEnded() {
        state.value.sessions -= 1
        if state.value.sessions == 0 { arm() }
    }
}
