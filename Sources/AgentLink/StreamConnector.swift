import AgentProtocol
import LinuxSystem
import Synchronization
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Link connections that carry one TCP connection's bytes each (docs/protocol.md): outgoing TCP through an
/// agent that cannot pass sockets (reached through a port-forward), opened with `connect`, where the
/// program gets this socket in place of its own; and the pod's stolen connections, opened with
/// `takeIncoming`.
///
/// Two connections are kept past their handshake, waiting for their first request, so that a stream costs
/// one round trip to the agent rather than a connect, a handshake and (through a port-forward) a new
/// port-forward stream; a thread of its own refills them after each use.
public final class StreamConnector: Sendable {
    public let address: AgentAddress
    let token: [UInt8]
    private let ready = Mutex<[Int32]>([])
    private let filling = Atomic<Bool>(false)
    static let readyCount = 2

    public init(address: AgentAddress, token: [UInt8]) {
        self.address = address
        self.token = token
    }

    /// A connection from the pod to `destination` (a sockaddr_in or sockaddr_in6); throws the errno the
    /// pod's connect got, or ECONNREFUSED when the agent cannot be reached.
    public func open(_ destination: [UInt8], timeoutSeconds: Int = 35) throws(Errno) -> Int32 {
        try open(.connect(address: destination), timeoutSeconds: timeoutSeconds)
    }

    /// The link connection that carries the pod's stolen connection `connection`; throws the errno the
    /// agent answered (ENOENT: it went to the pod's application), or ECONNREFUSED.
    public func take(incoming connection: UInt64, timeoutSeconds: Int = 10) throws(Errno) -> Int32 {
        try open(.takeIncoming(connection: connection), timeoutSeconds: timeoutSeconds)
    }

    /// A link connection whose first request is `request`, and which carries a stream after its `done`: a
    /// ready one when there is one that still works, else a new one.
    func open(_ request: Request, timeoutSeconds: Int) throws(Errno) -> Int32 {
        let deadline = Clock.monotonic() + UInt64(timeoutSeconds) * 1_000_000_000
        defer { refill() }
        let frame = Frame.encode(.request(id: 1, request))
        while let fd = nextReady() {
            // nil: the agent had closed it; the next one, or a new one.
            if let stream = try ask(fd, frame, deadline: deadline) { return stream }
        }
        let fd: Int32
        do {
            fd = try LinkSocket.connect(to: address, deadline: deadline)
        } catch {
            throw .connectionRefused
        }
        // Both at once: one round trip through the port-forward instead of two.
        guard welcomed(fd, after: hello + frame, deadline: deadline),
            let stream = try ask(fd, frame, deadline: deadline, writeFirst: false)
        else {
            throw .connectionRefused
        }
        return stream
    }

    /// Sends `request` (unless already sent) and reads its answer: the connection after `done`, nil (and it
    /// closed) when the connection failed before any answer; throws the errno the agent refused it with.
    private func ask(_ fd: Int32, _ request: [UInt8], deadline: UInt64, writeFirst: Bool = true) throws(Errno)
        -> Int32?
    {
        let answer: Message
        do {
            if writeFirst { try LinkSocket.writeAll(fd, request, deadline: deadline) }
            answer = try Self.readFrame(fd, deadline: deadline)
        } catch {
            close(fd)
            return nil
        }
        guard case .response(_, .done) = answer else {
            close(fd)
            if case .response(_, .failure(let errno, _)) = answer { throw Errno(rawValue: errno) }
            return nil
        }
        return fd
    }

    /// Writes `hello` (and what follows it in `bytes`) and reads the agent's welcome; false, with the
    /// connection closed, when the agent refused or went away.
    private func welcomed(_ fd: Int32, after bytes: [UInt8], deadline: UInt64) -> Bool {
        do {
            try LinkSocket.writeAll(fd, bytes, deadline: deadline)
            if case .welcome = try Self.readFrame(fd, deadline: deadline) { return true }
        } catch {}
        close(fd)
        return false
    }

    private var hello: [UInt8] { Frame.encode(.hello(version: protocolVersion, token: token)) }

    /// A ready connection that has not been closed meanwhile (an idle one has nothing to read).
    private func nextReady() -> Int32? {
        while let fd = ready.withLock({ $0.popLast() }) {
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&entry, 1, 0) == 0 { return fd }
            close(fd)
        }
        return nil
    }

    /// Brings the ready connections back to `readyCount`, on a thread of its own.
    private func refill() {
        guard !filling.exchange(true, ordering: .acquiring) else { return }
        let started = try? ThreadHandle.start(name: "sysmirror-ready") { [self] in
            defer { filling.store(false, ordering: .releasing) }
            while ready.withLock({ $0.count }) < Self.readyCount {
                let deadline = Clock.monotonic() + 10_000_000_000
                guard let fd = try? LinkSocket.connect(to: address, deadline: deadline),
                    welcomed(fd, after: hello, deadline: deadline)
                else { return }
                ready.withLock { $0.append(fd) }
            }
        }
        if started == nil { filling.store(false, ordering: .releasing) }
    }

    /// Exactly one frame, and not a byte more: what follows the answer is the connection's.
    static func readFrame(_ fd: Int32, deadline: UInt64) throws -> Message {
        let header = try readExactly(4, from: fd, deadline: deadline)
        let length = header.reduce(0) { $0 << 8 | Int($1) }
        guard length <= Frame.maximumLength else { throw Errno.badMessage }
        let frame = header + (try readExactly(length, from: fd, deadline: deadline))
        guard case .message(let message, _) = try Frame.parse(frame) else { throw Errno.badMessage }
        return message
    }

    static func readExactly(_ count: Int, from fd: Int32, deadline: UInt64) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var filled = 0
        while filled < count {
            let got = bytes.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + filled, count - filled, Int32(MSG_DONTWAIT)) }
            if got > 0 {
                filled += got
            } else if got == 0 {
                throw Errno.connectionReset
            } else if errno == EAGAIN || errno == EINTR {
                try LinkSocket.wait(fd, for: Int16(POLLIN), deadline: deadline)
            } else {
                throw Errno(rawValue: errno)
            }
        }
        return bytes
    }
}
