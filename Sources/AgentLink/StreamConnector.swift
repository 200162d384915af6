import AgentProtocol
import LinuxSystem
import SyscallDecoding
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Link connections that carry one TCP connection's bytes each (docs/protocol.md): outgoing TCP through an
/// agent that cannot pass sockets (reached through a port-forward), opened with `connect`, where the
/// program gets this socket in place of its own; and the pod's stolen connections, opened with
/// `takeIncoming`.
///
/// Everything happens on the serving event loop, without blocking: a connection's connect, handshake and
/// first request are registrations there, not a thread each. Connections are kept past their handshake,
/// waiting for their first request, so that a stream costs one round trip to the agent rather than a
/// connect, a handshake and (through a port-forward) a new port-forward stream: two, or as many as the
/// program has had opening at once (up to 32), so that a pool that warmed up once finds them ready.
public final class StreamConnector: @unchecked Sendable {  // its counts and `ready` are touched only on `loop`
    public let address: AgentAddress
    let token: [UInt8]
    let loop: EventLoop
    private var ready: [SharedDescriptor] = []
    /// The agent's address, resolved once (a host name is looked up on the first connection only).
    private var resolved: SocketAddress?
    private var filling = 0
    /// Opens under way, and the most there have been at once.
    private var opening = 0
    private var peak = 0
    static let readyCount = 2, mostReady = 32

    public typealias Completion = (Result<SharedDescriptor, Errno>) -> Void

    public init(address: AgentAddress, token: [UInt8], loop: EventLoop) {
        self.address = address
        self.token = token
        self.loop = loop
    }

    /// On the loop: a connection from the pod to `destination`; fails with the errno the pod's connect got,
    /// or ECONNREFUSED when the agent cannot be reached.
    public func open(_ destination: SocketAddress, timeoutSeconds: UInt64 = 35, _ completion: @escaping Completion) {
        open(.connect(address: destination.bytes), timeoutSeconds: timeoutSeconds, completion)
    }

    /// On the loop: the link connection that carries the pod's stolen connection `connection`; fails with
    /// the errno the agent answered (ENOENT: it went to the pod's application), or ECONNREFUSED.
    public func take(incoming connection: UInt64, timeoutSeconds: UInt64 = 10, _ completion: @escaping Completion) {
        open(.takeIncoming(connection: connection), timeoutSeconds: timeoutSeconds, completion)
    }

    /// A link connection whose first request is `request`, and which carries a stream after its `done`: a
    /// ready one when one still works, else a new one (hello and request sent together: one round trip).
    func open(_ request: Request, timeoutSeconds: UInt64, _ completion: @escaping Completion) {
        let frame = Frame.encode(.request(id: 1, request))
        let deadline = Clock.monotonic() + timeoutSeconds * 1_000_000_000
        opening += 1
        peak = max(peak, opening)
        let finished: Completion = { [self] result in
            opening -= 1
            completion(result)
        }
        defer { refill() }
        if let fd = nextReady() {
            Exchange.start(on: loop, fd, sending: frame, welcomeFirst: false, deadline: deadline) { [self] outcome in
                switch outcome {
                case .answered(let fd, .done): finished(.success(fd))
                case .answered(_, .failure(let errno, _)): finished(.failure(Errno(rawValue: errno)))
                case .answered, .failed, .welcomed:
                    // The agent had closed it (an idle timeout): a new one, within the same deadline.
                    openNew(frame, deadline: deadline, finished)
                }
            }
        } else {
            openNew(frame, deadline: deadline, finished)
        }
    }

    private func openNew(_ frame: [UInt8], deadline: UInt64, _ completion: @escaping Completion) {
        guard let fd = startConnect() else { return completion(.failure(.connectionRefused)) }
        Exchange.start(on: loop, fd, sending: hello + frame, welcomeFirst: true, deadline: deadline) { outcome in
            switch outcome {
            case .answered(let fd, .done): completion(.success(fd))
            case .answered(_, .failure(let errno, _)): completion(.failure(Errno(rawValue: errno)))
            case .answered, .failed, .welcomed: completion(.failure(.connectionRefused))
            }
        }
    }

    /// A new link connection under way; nil when the agent's address does not resolve or no socket can be made.
    private func startConnect() -> SharedDescriptor? {
        if resolved == nil { resolved = try? LinkSocket.resolve(address).first }
        guard let resolved, let fd = try? LinkSocket.startConnect(to: resolved) else { return nil }
        return SharedDescriptor(fd)
    }

    private var hello: [UInt8] { Frame.encode(.hello(version: protocolVersion, token: token)) }

    /// A ready connection the agent has not closed meanwhile (an idle one has nothing to read).
    private func nextReady() -> SharedDescriptor? {
        while let fd = ready.popLast() {
            if Sockets.isIdleAndOpen(fd.raw) { return fd }
        }
        return nil
    }

    /// Brings the ready connections back to `readyCount`, each a handshake on the loop.
    private func refill() {
        while ready.count + filling < min(max(Self.readyCount, peak), Self.mostReady) {
            guard let fd = startConnect() else { return }
            filling += 1
            let deadline = Clock.monotonic() + 10_000_000_000
            Exchange.start(on: loop, fd, sending: hello, welcomeFirst: true, expectsAnswer: false, deadline: deadline) {
                [self] outcome in
                filling -= 1
                if case .welcomed(let fd) = outcome { ready.append(fd) }
            }
        }
    }
}

/// One exchange on a link connection, on the loop: connect (if under way), send what is to be sent, then
/// read the welcome (for a new connection) and exactly one answer frame, and not a byte more: what follows
/// the answer is the stream's.
final class Exchange {
    enum Outcome {
        case welcomed(SharedDescriptor)
        case answered(SharedDescriptor, Response)
        case failed
    }

    private let loop: EventLoop
    private let fd: SharedDescriptor
    private(set) var output: [UInt8]
    private var awaitingWelcome: Bool
    private let expectsAnswer: Bool
    private var frame = FrameReader()
    private var registration: EventLoop.Registration?
    private var timer: EventLoop.Timer?
    private var finished: ((Outcome) -> Void)?

    private init(
        loop: EventLoop, fd: SharedDescriptor, output: [UInt8], welcomeFirst: Bool, expectsAnswer: Bool,
        finished: @escaping (Outcome) -> Void
    ) {
        self.loop = loop
        self.fd = fd
        self.output = output
        self.awaitingWelcome = welcomeFirst
        self.expectsAnswer = expectsAnswer
        self.finished = finished
    }

    static func start(
        on loop: EventLoop, _ fd: SharedDescriptor, sending output: [UInt8], welcomeFirst: Bool,
        expectsAnswer: Bool = true, deadline: UInt64, _ finished: @escaping (Outcome) -> Void
    ) {
        let exchange = Exchange(
            loop: loop, fd: fd, output: output, welcomeFirst: welcomeFirst, expectsAnswer: expectsAnswer,
            finished: finished)
        // Sent at once where the socket takes it (a ready connection, a unix socket): the loop then waits
        // only for the answer. A TCP connect still under way takes nothing yet (EAGAIN): writable first.
        guard exchange.send() else { return finished(.failed) }
        do {
            exchange.registration = try loop.register(fd.raw, for: exchange.output.isEmpty ? .readable : .writable) {
                exchange.ready($0)
            }
        } catch {
            return finished(.failed)
        }
        let now = Clock.monotonic()
        exchange.timer = loop.schedule(in: deadline > now ? deadline - now : 0) { exchange.end(.failed) }
    }

    /// Sends what the socket takes; false when the connection failed (a refused connect among others).
    private func send() -> Bool {
        guard !output.isEmpty else { return true }
        do throws(SystemCallError) {
            output.removeFirst(try Sockets.send(fd.raw, output[...]))
            return true
        } catch {
            return error.errno == .resourceTemporarilyUnavailable
        }
    }

    private func ready(_ events: EventLoop.Events) {
        if !output.isEmpty {
            guard send() else { return end(.failed) }
            if output.isEmpty, let registration { loop.change(registration, to: .readable) }
            return
        }
        while true {
            switch frame.read(from: fd.raw) {
            case .waiting: return
            case .failed: return end(.failed)
            case .message(.welcome) where awaitingWelcome:
                awaitingWelcome = false
                if !expectsAnswer { return end(.welcomed(fd)) }
            case .message(.response(_, let response)) where !awaitingWelcome:
                return end(.answered(fd, response))
            case .message:
                return end(.failed)
            }
        }
    }

    private func end(_ outcome: Outcome) {
        guard let finished else { return }
        self.finished = nil
        if let registration { loop.deregister(registration) }
        if let timer { loop.cancel(timer) }
        finished(outcome)
    }
}

/// Reads one frame at a time from a non-blocking socket, never past its end.
struct FrameReader {
    private var header: [UInt8] = []
    private var body: [UInt8] = []
    private var bodyLength: Int?

    enum Step {
        case waiting
        case failed
        case message(Message)
    }

    mutating func read(from fd: Int32) -> Step {
        while true {
            let wanted = bodyLength.map { $0 - body.count } ?? 4 - header.count
            if wanted > 0 {
                let piece: [UInt8]
                do throws(SystemCallError) {
                    piece = try Sockets.receive(fd, upTo: wanted, flags: Int32(MSG_DONTWAIT))
                } catch {
                    return error.errno == .resourceTemporarilyUnavailable ? .waiting : .failed
                }
                guard !piece.isEmpty else { return .failed }
                if bodyLength == nil { header += piece } else { body += piece }
                if bodyLength == nil && header.count == 4 {
                    let length = header.reduce(0) { $0 << 8 | Int($1) }
                    guard length <= Frame.maximumLength else { return .failed }
                    bodyLength = length
                }
                continue
            }
            defer { (header, body, bodyLength) = ([], [], nil) }
            guard case .message(let message, _)? = try? Frame.parse(header + body) else { return .failed }
            return .message(message)
        }
    }
}
