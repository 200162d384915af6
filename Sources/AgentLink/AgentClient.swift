import AgentProtocol
import Logging
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// What a request's handler is told, in order: the agent's response, then for streams the chunks and the end.
public enum Reply: Sendable {
    case response(Response)
    case chunk([UInt8])
    case end
    /// The link failed (dropped, timed out, closed) before the request was complete.
    case linkFailure(String)
}

/// Whether a request's handler expects more (`chunk`s, an `end`, a `done` after an upload).
public enum ReplyDisposition: Sendable {
    case complete
    /// More is due from the agent: the request times out if nothing comes.
    case expectingMore
    /// The next step is the client's (an upload the program may keep open for hours): no timeout.
    case waitingOnClient
}

/// Why a session could not start.
public enum AgentConnectError: Error, Sendable, CustomStringConvertible {
    case unreachable(AgentAddress, String)
    case refused(AgentAddress, String)
    case noAnswer(AgentAddress, seconds: Int64)

    public var description: String {
        switch self {
        case .unreachable(let address, let reason):
            "cannot reach the agent at \(address) (\(reason)). Is `sysmirror agent --listen \(address)` running?"
        case .refused(let address, let reason):
            "the agent at \(address) refused the session: \(reason)."
        case .noAnswer(let address, let seconds):
            "the agent at \(address) did not answer the handshake within \(seconds) s. Is a sysmirror agent listening there?"
        }
    }
}

/// The supervisor's end of the link: one connection, many requests in flight, each answered through its
/// handler on the link's event loop thread. Thread-safe: any thread may send.
public final class AgentClient: Sendable {
    public typealias Handler = @Sendable (Reply) -> ReplyDisposition

    /// A request that hears nothing from the agent for this long fails, so a stuck agent cannot hang the
    /// program; chunks count as signs of life.
    public static let requestTimeout = TimeAmount.seconds(10)

    public let address: AgentAddress
    /// What the agent said about itself in the handshake.
    public let agentDescription: String
    let channel: any Channel
    let state: RequestTable
    let group: MultiThreadedEventLoopGroup
    private let nextID = Atomic<UInt32>(1)

    init(
        address: AgentAddress, agentDescription: String, channel: any Channel, state: RequestTable,
        group: MultiThreadedEventLoopGroup
    ) {
        self.address = address
        self.agentDescription = agentDescription
        self.channel = channel
        self.state = state
        self.group = group
    }

    /// Connects and authenticates; blocks until the session is open or has failed.
    public static func connect(
        to address: AgentAddress, token: [UInt8], timeout: TimeAmount = .seconds(5), logger: Logger
    ) throws(AgentConnectError) -> AgentClient {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let table = RequestTable(logger: logger)
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(timeout)
            .channelOption(.socketOption(.so_keepalive), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addMessageCodec()
                    try channel.pipeline.syncOperations.addHandler(ClientHandler(table: table))
                }
            }
        let channel: any Channel
        do {
            switch address {
            case .unix(let path): channel = try bootstrap.connect(unixDomainSocketPath: path).wait()
            case .tcp(let host, let port): channel = try bootstrap.connect(host: host, port: port).wait()
            }
        } catch {
            try? group.syncShutdownGracefully()
            throw .unreachable(address, Self.describe(error))
        }
        let welcome = channel.eventLoop.makePromise(of: String.self)
        table.awaitWelcome(welcome)
        channel.writeAndFlush(Message.hello(version: protocolVersion, token: token), promise: nil)
        let deadline = channel.eventLoop.scheduleTask(in: timeout) {
            welcome.fail(AgentConnectError.noAnswer(address, seconds: timeout.nanoseconds / 1_000_000_000))
        }
        do {
            let description = try welcome.futureResult.wait()
            deadline.cancel()
            let client = AgentClient(
                address: address, agentDescription: description, channel: channel, state: table, group: group)
            channel.eventLoop.execute { table.startTimeouts(on: channel.eventLoop) }
            return client
        } catch {
            deadline.cancel()
            try? channel.close().wait()
            try? group.syncShutdownGracefully()
            if let error = error as? AgentConnectError { throw error }
            if let refusal = error as? Refusal { throw .refused(address, refusal.reason) }
            throw .unreachable(address, Self.describe(error))
        }
    }

    /// The errno's text where there is one: NIO's descriptions name its internal calls.
    static func describe(_ error: any Error) -> String {
        if let error = error as? IOError { return String(cString: strerror(error.errnoCode)) }
        if let error = error as? NIOConnectionError, let first = error.connectionErrors.first {
            return describe(first.error)
        }
        return "\(error)"
    }

    /// Sends `request`; `handler` hears every reply until it says the request is complete. Returns the
    /// request's id (for chunks sent with it and for `cancel`).
    @discardableResult
    public func send(_ request: Request, handler: @escaping Handler) -> UInt32 {
        var next = nextID.add(1, ordering: .relaxed).newValue
        if next == 0 { next = nextID.add(1, ordering: .relaxed).newValue }
        let id = next
        let table = state
        let channel = channel
        channel.eventLoop.execute {
            guard table.register(id, handler: handler) else { return }
            channel.writeAndFlush(Message.request(id: id, request), promise: nil)
        }
        return id
    }

    /// Sends `request` and waits for its single response (for the session's start, not the hot path).
    public func call(_ request: Request) throws(AgentCallError) -> Response {
        let promise = channel.eventLoop.makePromise(of: Response.self)
        send(request) { reply in
            switch reply {
            case .response(let response): promise.succeed(response)
            case .linkFailure(let reason): promise.fail(AgentCallError(reason))
            case .chunk, .end: promise.fail(AgentCallError("the agent sent a stream where none was expected"))
            }
            return .complete
        }
        do {
            return try promise.futureResult.wait()
        } catch let error as AgentCallError {
            throw error
        } catch {
            throw AgentCallError("\(error)")
        }
    }

    /// Sends a chunk of an upload, or its end (`bytes` nil). The returned future completes once the
    /// bytes are in the socket, for back-pressure.
    public func upload(_ id: UInt32, _ bytes: [UInt8]?) -> EventLoopFuture<Void> {
        let message: Message = bytes.map { .chunk(id: id, $0) } ?? .end(id: id)
        return channel.writeAndFlush(message)
    }

    /// The program's call is gone: tell the agent to stop streaming, and forget the request.
    public func cancel(_ id: UInt32) {
        let table = state
        let channel = channel
        channel.eventLoop.execute {
            if table.forget(id) { channel.writeAndFlush(Message.cancel(id: id), promise: nil) }
        }
    }

    /// Runs `body` on the link's thread, after everything sent before it.
    public func execute(_ body: @escaping @Sendable () -> Void) {
        channel.eventLoop.execute(body)
    }

    /// Whether the link is still up.
    public var isActive: Bool { channel.isActive }

    /// Closes the link; requests still pending fail.
    public func close() {
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
    }
}

/// A request that failed for a reason other than the pod's errno.
public struct AgentCallError: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

struct Refusal: Error {
    let reason: String
}

/// The requests in flight, confined to the link's event loop.
final class RequestTable: @unchecked Sendable {
    struct Pending {
        let handler: AgentClient.Handler
        /// Nil while the client has the next step.
        var lastHeard: NIODeadline?
    }

    private var pending: [UInt32: Pending] = [:]
    private var welcome: EventLoopPromise<String>?
    /// Set once the link is gone: new requests fail at once.
    private var failure: String?
    let logger: Logger

    init(logger: Logger) { self.logger = logger }

    func awaitWelcome(_ promise: EventLoopPromise<String>) { welcome = promise }

    /// False (after telling the handler) when the link is already gone.
    func register(_ id: UInt32, handler: @escaping AgentClient.Handler) -> Bool {
        if let failure {
            _ = handler(.linkFailure(failure))
            return false
        }
        pending[id] = Pending(handler: handler, lastHeard: .now())
        return true
    }

    func forget(_ id: UInt32) -> Bool { pending.removeValue(forKey: id) != nil }

    func deliver(_ reply: Reply, to id: UInt32) {
        guard var entry = pending[id] else { return }  // cancelled, or a late chunk of a cancelled stream
        switch entry.handler(reply) {
        case .complete:
            pending[id] = nil
        case .expectingMore:
            entry.lastHeard = .now()
            pending[id] = entry
        case .waitingOnClient:
            entry.lastHeard = nil
            pending[id] = entry
        }
    }

    func received(_ message: Message) {
        switch message {
        case .welcome(_, let agent):
            welcome?.succeed(agent)
            welcome = nil
        case .refused(let version, let reason):
            let detail = version == protocolVersion ? reason : "\(reason) (agent protocol \(version), this sysmirror \(protocolVersion))"
            welcome?.fail(Refusal(reason: detail))
            welcome = nil
        case .protocolError(let text):
            failAll("the agent reported a protocol error: \(text)")
        case .response(let id, let response): deliver(.response(response), to: id)
        case .chunk(let id, let bytes): deliver(.chunk(bytes), to: id)
        case .end(let id): deliver(.end, to: id)
        case .hello, .request, .cancel, .unknown:
            logger.warning("ignored an unexpected message from the agent: \(message)")
        }
    }

    /// Fails every pending request, and every later one.
    func failAll(_ reason: String) {
        if failure == nil { failure = reason }
        welcome?.fail(Refusal(reason: reason))
        welcome = nil
        let failed = pending
        pending = [:]
        for (_, entry) in failed { _ = entry.handler(.linkFailure(reason)) }
    }

    /// Every second, fails the requests that have not heard from the agent within the timeout.
    func startTimeouts(on loop: any EventLoop) {
        loop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { [self] _ in
            let limit = NIODeadline.now() - AgentClient.requestTimeout
            for (id, entry) in pending where entry.lastHeard.map({ $0 < limit }) ?? false {
                pending[id] = nil
                _ = entry.handler(
                    .linkFailure("the agent did not answer within \(AgentClient.requestTimeout.nanoseconds / 1_000_000_000) s"))
            }
        }
    }
}

final class ClientHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = Message
    let table: RequestTable

    init(table: RequestTable) { self.table = table }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        table.received(unwrapInboundIn(data))
    }

    func channelInactive(context: ChannelHandlerContext) {
        table.failAll("the link to the agent closed")
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        table.failAll("the link to the agent failed: \(error)")
        context.close(promise: nil)
    }
}
