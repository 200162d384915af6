import AgentProtocol
import CSysmirror
import LinuxSystem
import Logging
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
    case noAnswer(AgentAddress, seconds: Int)

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

/// A request that failed for a reason other than the pod's errno.
public struct AgentCallError: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The supervisor's end of the link: one connection, many requests in flight from any thread.
///
/// Plain threads rather than an event loop, for latency: the thread that sends (the supervisor's
/// receiving thread) writes the request into the socket itself, and one reader thread, blocked in poll,
/// hands each reply to its request's handler. An event loop would add a wake-up of its own thread to
/// every request; on these machines that is about a quarter of a remote call's time (docs/benchmarks.md).
/// Nothing here ever blocks a sender: bytes the socket cannot take at once wait in a queue that the reader
/// thread flushes.
public final class AgentClient: Sendable {
    public typealias Handler = @Sendable (Reply) -> ReplyDisposition

    /// A request that hears nothing from the agent for this long fails, so a stuck agent cannot hang the
    /// program; chunks count as signs of life.
    public static let requestTimeout: UInt64 = 10
    /// Uploads wait while this much is queued for the socket (`canTakeMore`).
    static let queueLimit = 4 << 20

    public let address: AgentAddress
    /// What the agent said about itself in the handshake.
    public let agentDescription: String
    /// How a broken link comes back; nil: it does not.
    let resumption: Resumption?
    /// Wakes the reader thread: bytes were queued, or the client is closing.
    let wakeUp: Int32
    let logger: Logger
    private let requests = Mutex(Requests())
    private let outbound: Mutex<Outbound>
    private let reader = Mutex<ThreadHandle?>(nil)
    /// Told each time the link breaks (once for good, or at every cut of a resumable one).
    private let failureWatchers = Mutex<[@Sendable (String) -> Void]>([])
    /// Told each time a resumable link is back.
    private let resumeWatchers = Mutex<[@Sendable () -> Void]>([])

    /// How a link that breaks comes back (a port-forward that drops and is restarted on the same local
    /// port): the client connects again to the same address with the same token, and requests made
    /// meanwhile wait for it. Requests in flight at the cut that may be asked again (`Request.isRepeatable`)
    /// and heard nothing yet are sent again on the new session; the others fail: their state in the agent
    /// went with its session.
    public struct Resumption: Sendable {
        let token: [UInt8]
        /// How long the link may stay down before every request fails.
        let patienceSeconds: UInt64

        public init(token: [UInt8], patienceSeconds: UInt64 = 30) {
            self.token = token
            self.patienceSeconds = patienceSeconds
        }
    }

    struct Requests {
        var pending: [UInt32: Pending] = [:]
        var nextID: UInt32 = 1
        /// Set once the link is gone: new requests fail at once.
        var failure: String?
    }

    struct Pending {
        let handler: Handler
        /// Nil while the client has the next step.
        var lastHeard: UInt64?
        /// The request, when a cut before its first reply may send it again (`Request.isRepeatable`).
        var repeatable: Request? = nil
        /// Whether a reply came: a request half answered cannot be asked again.
        var replied = false
        /// A relayed connection's stream hears the agent's `credit` here (`LinkStream`).
        var credit: (@Sendable (Int) -> Void)? = nil
    }

    struct Outbound {
        /// The link's socket; -1 while a resumable link is down (frames wait in `queued`).
        var socket: Int32
        var queued: [UInt8] = []
        var closing = false
        /// Why the agent is gone for good (`abandon`): the link does not come back.
        var abandoned: String?
    }

    init(
        address: AgentAddress, agentDescription: String, socket: Int32, wakeUp: Int32, resumption: Resumption?,
        logger: Logger
    ) {
        self.address = address
        self.agentDescription = agentDescription
        outbound = Mutex(Outbound(socket: socket))
        self.wakeUp = wakeUp
        self.resumption = resumption
        self.logger = logger
    }

    /// Connects and authenticates; blocks until the session is open or has failed.
    public static func connect(
        to address: AgentAddress, token: [UInt8], timeoutSeconds: Int = 5, resumption: Resumption? = nil,
        logger: Logger
    ) throws(AgentConnectError) -> AgentClient {
        try connect(
            to: address, token: token, timeoutSeconds: timeoutSeconds, resumption: resumption, logger: logger,
            asking: []
        )
        .client
    }

    /// Connects and authenticates, with `first` and `alsoSending` sent beside the hello in one write: over a
    /// link of some latency, a session's first requests then cost no round trip beyond the handshake's.
    /// `opened`, a session already through its handshake at `address`, saves the connection and the hello:
    /// the requests go out on it at once (a new connection is opened if it has ended meanwhile).
    /// Blocks until the session is open and `first` are answered (or have failed); `alsoSending`'s handlers
    /// hear their replies as any request's do.
    public static func connect(
        to address: AgentAddress, token: [UInt8], timeoutSeconds: Int = 5, resumption: Resumption? = nil,
        over opened: OpenedSession? = nil, logger: Logger, asking first: [Request],
        alsoSending others: [(Request, Handler)] = []
    ) throws(AgentConnectError) -> (client: AgentClient, answers: [Result<Response, AgentCallError>]) {
        let requests = first + others.map(\.0)
        let pipelined = requests.enumerated().flatMap { Frame.encode(.request(id: UInt32($0.offset + 1), $0.element)) }
        let (socket, welcome, buffer) =
            if let kept = opened.flatMap({ try? $0.sending(pipelined, timeoutSeconds: timeoutSeconds) }) {
                kept
            } else {
                try LinkSocket.openSession(
                    to: address, token: token, timeoutSeconds: timeoutSeconds, pipelined: pipelined)
            }
        let wakeUp = sysm_eventfd()
        let client = AgentClient(
            address: address, agentDescription: welcome, socket: socket, wakeUp: wakeUp, resumption: resumption,
            logger: logger)
        // Their ids were taken above; their answers may be in `buffer` already, so they wait before the reader starts.
        let calls = first.indices.map { client.expect(id: UInt32($0 + 1)) }
        client.requests.withLock { state in
            for (offset, (request, handler)) in others.enumerated() {
                state.pending[UInt32(first.count + offset + 1)] = Pending(
                    handler: handler, lastHeard: Clock.monotonic(), repeatable: request.isRepeatable ? request : nil)
            }
            state.nextID = UInt32(requests.count + 1)
        }
        do {
            let handshakeRest = buffer
            var thread: ThreadHandle? = try ThreadHandle.start(name: "sysmirror-link") {
                client.readReplies(socket, handshakeRest)
            }
            client.reader.withLock { $0 = thread.take() }
        } catch {
            Glibc.close(socket)
            Glibc.close(wakeUp)
            throw .unreachable(address, "could not start the link's thread: \(error)")
        }
        return (client, calls.map { $0() })
    }

    // MARK: Sending

    /// Sends `request`; `handler` hears every reply, on the link's thread, until it says the request is
    /// complete. Returns the request's id (for uploads and `cancel`); `prepare` runs with the id before the
    /// request leaves, so a handler never sees a reply before its owner knows the id.
    @discardableResult
    public func send(_ request: Request, prepare: (UInt32) -> Void = { _ in }, handler: @escaping Handler) -> UInt32 {
        send(
            request, prepare: prepare,
            pending: Pending(
                handler: handler, lastHeard: Clock.monotonic(), repeatable: request.isRepeatable ? request : nil))
    }

    /// Sends a request that opens a relayed connection's stream (`LinkStream`): `credit` hears the agent's
    /// credits for it. It never times out here: its opener keeps a deadline of its own (a pod's connect may
    /// take 30 s), and an open connection may stay quiet for hours.
    func openStream(
        _ request: Request, credit: @escaping @Sendable (Int) -> Void, handler: @escaping Handler
    ) -> UInt32 {
        send(request, prepare: { _ in }, pending: Pending(handler: handler, lastHeard: nil, credit: credit))
    }

    private func send(_ request: Request, prepare: (UInt32) -> Void, pending: Pending) -> UInt32 {
        let handler = pending.handler
        let (id, failure) = requests.withLock { state -> (UInt32, String?) in
            let id = state.nextID
            state.nextID = state.nextID == .max ? 1 : state.nextID + 1
            if state.failure == nil { state.pending[id] = pending }
            return (id, state.failure)
        }
        prepare(id)
        if let failure {
            _ = handler(.linkFailure(failure))
        } else {
            enqueue(Frame.encode(.request(id: id, request)))
        }
        return id
    }

    /// Whether the socket's queue has room for more uploads: a pump waits while it has not, so that a fast
    /// writer moves at the link's pace.
    public var canTakeMore: Bool { outbound.withLock { $0.queued.count } <= Self.queueLimit }

    /// Sends a chunk of an upload, or its end (`bytes` nil), without waiting (see `canTakeMore`); throws
    /// once the link has failed.
    public func upload(_ id: UInt32, _ bytes: [UInt8]?) throws(AgentCallError) {
        if let failure = requests.withLock({ $0.failure }) { throw AgentCallError(failure) }
        enqueue(Frame.encode(bytes.map { .chunk(id: id, $0) } ?? .end(id: id)))
    }

    /// The program's call is gone: tell the agent to stop streaming, and forget the request.
    public func cancel(_ id: UInt32) {
        if requests.withLock({ $0.pending.removeValue(forKey: id) != nil }) {
            enqueue(Frame.encode(.cancel(id: id)))
        }
    }

    /// The request is over on both sides (a relayed connection ended both ways): its handler hears no more.
    public func forget(_ id: UInt32) {
        _ = requests.withLock { $0.pending.removeValue(forKey: id) }
    }

    /// Tells the agent that `bytes` more of request `id`'s stream were passed on (`StreamWindow`).
    public func grant(_ id: UInt32, _ bytes: UInt32) {
        enqueue(Frame.encode(.credit(id: id, bytes: bytes)))
    }

    /// Sends `request` and waits for its single response (for the session's start, not the hot path).
    public func call(_ request: Request) throws(AgentCallError) -> Response {
        let (handler, wait) = Self.singleResponse()
        send(request, handler: handler)
        return try wait().get()
    }

    /// Registers a handler for request `id`, sent already; returns what waits for its single response.
    func expect(id: UInt32) -> () -> Result<Response, AgentCallError> {
        let (handler, wait) = Self.singleResponse()
        requests.withLock { $0.pending[id] = Pending(handler: handler, lastHeard: Clock.monotonic()) }
        return wait
    }

    /// A handler that takes one response, and what waits for it.
    private static func singleResponse() -> (Handler, () -> Result<Response, AgentCallError>) {
        let result = Mutex<Result<Response, AgentCallError>?>(nil)
        let done = Latch()
        let handler: Handler = { reply in
            let outcome: Result<Response, AgentCallError> =
                switch reply {
                case .response(let response): .success(response)
                case .linkFailure(let reason): .failure(AgentCallError(reason))
                case .chunk, .end: .failure(AgentCallError("the agent sent a stream where none was expected"))
                }
            result.withLock { $0 = outcome }
            done.signal()
            return .complete
        }
        return (
            handler,
            {
                done.wait()
                return result.withLock { $0! }
            }
        )
    }

    /// Writes what it can now, in order behind anything queued; the reader thread flushes the rest.
    func enqueue(_ frame: [UInt8]) {
        let wake = outbound.withLock { out -> Bool in
            guard !out.closing else { return false }
            if out.queued.isEmpty && out.socket >= 0 {
                let sent = LinkSocket.sendSome(out.socket, frame)
                if sent == frame.count { return false }
                out.queued.append(contentsOf: frame[max(sent, 0)...])
                return true
            }
            out.queued.append(contentsOf: frame)
            return false  // the reader already waits for the socket to take more
        }
        if wake { signalReader() }
    }

    func signalReader() {
        var one: UInt64 = 1
        _ = write(wakeUp, &one, 8)
    }

    /// The agent is gone for good (its pod was deleted, and nothing follows it): calls waiting for the link
    /// to come back, and every later one, fail now with `reason`.
    public func abandon(_ reason: String) {
        outbound.withLock { $0.abandoned = reason }
        signalReader()
    }

    /// Whether the link is still up: once it has failed, no request can succeed.
    public var isActive: Bool { requests.withLock { $0.failure == nil } }

    /// Closes the link; requests still pending fail.
    public func close() {
        outbound.withLock { $0.closing = true }
        signalReader()
        reader.withLock { $0.take() }?.join()
    }

    // MARK: The reader thread

    func readReplies(_ initial: Int32, _ handshakeRest: FrameBuffer) {
        var socket = initial
        var buffer = handshakeRest
        var lastTimeoutCheck = Clock.monotonic()
        defer {
            outbound.withLock { $0.socket = -1 }
            if socket >= 0 { Glibc.close(socket) }
            Glibc.close(wakeUp)
        }
        /// The link broke: back with a new socket, or (nil) failed for good.
        func broke(_ reason: String) -> Bool {
            Glibc.close(socket)
            socket = -1
            guard let (resumed, rest) = resume(after: reason) else { return false }
            (socket, buffer) = (resumed, rest)
            return true
        }
        /// Hands on every whole message read so far; false when one is malformed (the link then failed).
        func deliverBuffered() -> Bool {
            do {
                while let message = try buffer.next() { received(message) }
                return true
            } catch {
                failAll("the agent sent a malformed frame: \(error)")
                return false
            }
        }
        // Answers to requests sent with the hello may have come in the welcome's read.
        guard deliverBuffered() else { return }
        while true {
            let (closing, abandoned) = outbound.withLock { ($0.closing, $0.abandoned) }
            if closing { return failAll("the session closed") }
            if let abandoned { return failAll(abandoned) }
            let hasQueued = outbound.withLock { !$0.queued.isEmpty }
            var fds = [
                pollfd(fd: socket, events: Int16(POLLIN) | (hasQueued ? Int16(POLLOUT) : 0), revents: 0),
                pollfd(fd: wakeUp, events: Int16(POLLIN), revents: 0),
            ]
            let ready = poll(&fds, 2, 1000)
            if ready < 0 && errno != EINTR { return failAll("the link failed: poll: \(currentErrno())") }
            if fds[1].revents != 0 {
                var value: UInt64 = 0
                _ = read(wakeUp, &value, 8)
            }
            if fds[0].revents & Int16(POLLOUT) != 0, !flushQueue() {
                if broke("the link to the agent closed") { continue } else { return }
            }
            if fds[0].revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                switch buffer.fill(from: socket) {
                case .closed:
                    if broke("the link to the agent closed") { continue } else { return }
                case .failed(let errno):
                    if broke("the link to the agent failed: \(String(cString: strerror(errno)))") {
                        continue
                    } else {
                        return
                    }
                case .filled, .wouldBlock: break
                }
                guard deliverBuffered() else { return }
            }
            let now = Clock.monotonic()
            if now - lastTimeoutCheck > 1_000_000_000 {
                lastTimeoutCheck = now
                expireRequests(now: now)
            }
        }
    }

    /// On the reader thread, after a cut: with a `resumption`, the requests in flight fail, the watchers hear
    /// of it, and the client connects again (backing off from 0.1 to 2 s) while later requests wait; the new
    /// socket and what followed its handshake, or nil when the link stays down past the patience (or the
    /// client closes), every request then failed.
    private func resume(after reason: String) -> (Int32, FrameBuffer)? {
        guard let resumption else {
            failAll(reason)
            return nil
        }
        // Queued frames belong to requests in flight: those asked again queue first, in order, the others
        // fail now; later ones queue whole behind them. One step, so that no request falls between.
        let (cut, repeated) = outbound.withLock { out in
            out.socket = -1
            out.queued = []
            return requests.withLock { state -> ([Handler], Int) in
                var cut: [Handler] = []
                for (id, pending) in state.pending.sorted(by: { $0.key < $1.key }) {
                    if let request = pending.repeatable, !pending.replied {
                        Frame.encode(.request(id: id, request), into: &out.queued)
                    } else {
                        cut.append(pending.handler)
                        state.pending[id] = nil
                    }
                }
                return (cut, state.pending.count)
            }
        }
        let patience = resumption.patienceSeconds
        let asked = repeated == 0 ? "" : ", and \(repeated) in flight at the cut will be asked again"
        logger.warning("\(reason): connecting again for up to \(patience) s; calls made meanwhile wait\(asked)")
        for handler in cut { _ = handler(.linkFailure("\(reason) while the call was under way")) }
        for watcher in failureWatchers.withLock({ $0 }) { watcher(reason) }
        let deadline = Clock.monotonic() + patience * 1_000_000_000
        var delay: UInt64 = 100_000_000
        while Clock.monotonic() < deadline {
            if outbound.withLock({ $0.closing || $0.abandoned != nil }) { break }
            if let (socket, _, buffer) = try? LinkSocket.openSession(
                to: address, token: resumption.token, timeoutSeconds: 5)
            {
                outbound.withLock { $0.socket = socket }
                let now = Clock.monotonic()
                requests.withLock { state in
                    for id in state.pending.keys { state.pending[id]?.lastHeard = now }
                }
                logger.notice("the link to the agent at \(address) is back")
                signalReader()  // what waited in the queue goes out on the loop's next turn
                for watcher in resumeWatchers.withLock({ $0 }) { watcher() }
                return (socket, buffer)
            }
            // Woken early only by close().
            var wait = pollfd(fd: wakeUp, events: Int16(POLLIN), revents: 0)
            if poll(&wait, 1, Int32(min(delay, deadline - min(deadline, Clock.monotonic())) / 1_000_000)) > 0 {
                var value: UInt64 = 0
                _ = read(wakeUp, &value, 8)
            }
            delay = min(delay * 2, 2_000_000_000)
        }
        let (closing, abandoned) = outbound.withLock { ($0.closing, $0.abandoned) }
        failAll(
            closing ? "the session closed" : abandoned ?? "\(reason), and it did not come back within \(patience) s")
        return nil
    }

    /// Writes queued bytes; false when the socket is gone.
    func flushQueue() -> Bool {
        outbound.withLock { out in
            guard !out.queued.isEmpty, out.socket >= 0 else { return true }
            let sent = LinkSocket.sendSome(out.socket, out.queued)
            if sent < 0 { return false }
            out.queued.removeFirst(sent)
            return true
        }
    }

    func received(_ message: Message) {
        switch message {
        case .response(let id, let response): deliver(.response(response), to: id)
        case .chunk(let id, let bytes): deliver(.chunk(bytes), to: id)
        case .end(let id): deliver(.end, to: id)
        case .credit(let id, let bytes): requests.withLock { $0.pending[id]?.credit }?(Int(bytes))
        case .protocolError(let text): failAll("the agent reported a protocol error: \(text)")
        case .hello, .welcome, .refused, .request, .cancel, .unknown:
            logger.warning("ignored an unexpected \(message.kind) from the agent")
        }
    }

    /// Calls the handler outside the lock: it may send or cancel.
    func deliver(_ reply: Reply, to id: UInt32) {
        guard let handler = requests.withLock({ $0.pending[id]?.handler }) else { return }  // cancelled
        let disposition = handler(reply)
        requests.withLock { state in
            state.pending[id]?.replied = true
            switch disposition {
            case .complete: state.pending[id] = nil
            case .expectingMore: state.pending[id]?.lastHeard = Clock.monotonic()
            case .waitingOnClient: state.pending[id]?.lastHeard = nil
            }
        }
    }

    /// Fails the requests not heard from for `requestTimeout`. A request sent by another thread after `now`
    /// was read is younger than `now`, not expired (nor an arithmetic overflow).
    func expireRequests(now: UInt64) {
        let limit = Self.requestTimeout * 1_000_000_000
        let expired = requests.withLock { state -> [Handler] in
            let ids = state.pending.filter { $0.value.lastHeard.map { now > $0 + limit } ?? false }.map(\.key)
            return ids.compactMap { state.pending.removeValue(forKey: $0)?.handler }
        }
        for handler in expired { _ = handler(.linkFailure("the agent did not answer within \(Self.requestTimeout) s")) }
    }

    /// Fails every pending request, and every later one: the link is gone for good.
    func failAll(_ reason: String) {
        let (failed, first) = requests.withLock { state -> ([Handler], Bool) in
            let first = state.failure == nil
            if first { state.failure = reason }
            defer { state.pending = [:] }
            return (state.pending.values.map(\.handler), first)
        }
        for handler in failed { _ = handler(.linkFailure(reason)) }
        if first {
            for watcher in failureWatchers.withLock({ $0 }) { watcher(reason) }
        }
    }

    /// Calls `body` (on the link's thread) each time a resumable link is back after a cut: what the session
    /// had in the agent (its ports, above all) went with the old connection, and is asked for again.
    public func whenLinkIsBack(_ body: @escaping @Sendable () -> Void) {
        resumeWatchers.withLock { $0.append(body) }
    }

    /// Calls `body` (on the link's thread) when the link breaks, with the reason (at each cut of a resumable
    /// link); at once if it has failed for good.
    public func whenLinkFails(_ body: @escaping @Sendable (String) -> Void) {
        failureWatchers.withLock { $0.append(body) }
        if let failure = requests.withLock({ $0.failure }) { body(failure) }
    }
}
