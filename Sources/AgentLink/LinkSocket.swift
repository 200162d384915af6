import AgentProtocol
import CSysmirror
import LinuxSystem

#if canImport(Glibc)
    import Glibc
#endif

/// The client's socket calls: a non-blocking stream socket to the agent, unix or TCP.
enum LinkSocket {
    struct Failure: Error {
        let reason: String
        var timedOut = false
    }

    /// Connects before `deadline` (monotonic ns). For TCP, every address of the host is tried in turn, and
    /// the socket gets TCP_NODELAY: requests are small and must not wait for each other.
    static func connect(to address: AgentAddress, deadline: UInt64) throws(Failure) -> Int32 {
        switch address {
        case .unix(let path):
            var storage = sockaddr_un()
            storage.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &storage.sun_path) { raw in
                for (index, byte) in path.utf8.enumerated() where index < raw.count - 1 { raw[index] = byte }
            }
            return try withUnsafeBytes(of: &storage) { raw throws(Failure) in
                try attempt(
                    family: AF_UNIX, address: raw.baseAddress!, length: socklen_t(raw.count), deadline: deadline)
            }
        case .tcp(let host, let port):
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            hints.ai_flags = AI_NUMERICSERV
            var list: UnsafeMutablePointer<addrinfo>?
            let status = getaddrinfo(host, String(port), &hints, &list)
            guard status == 0 else { throw Failure(reason: String(cString: gai_strerror(status))) }
            defer { freeaddrinfo(list) }
            var last = Failure(reason: "no address for \(host)")
            var entry = list
            while let info = entry?.pointee {
                do {
                    let fd = try attempt(
                        family: info.ai_family, address: info.ai_addr, length: info.ai_addrlen, deadline: deadline)
                    var one: Int32 = 1
                    setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, socklen_t(MemoryLayout<Int32>.size))
                    return fd
                } catch {
                    last = error
                }
                entry = info.ai_next
            }
            throw last
        }
    }

    static func attempt(
        family: Int32, address: UnsafeRawPointer, length: socklen_t, deadline: UInt64
    ) throws(Failure) -> Int32 {
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue)
        let fd = socket(family, type, 0)
        guard fd >= 0 else { throw Failure(reason: String(cString: strerror(errno))) }
        if Glibc.connect(fd, address.assumingMemoryBound(to: sockaddr.self), length) == 0 { return fd }
        guard errno == EINPROGRESS || errno == EAGAIN else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw Failure(reason: reason)
        }
        do {
            try wait(fd, for: Int16(POLLOUT), deadline: deadline)
        } catch {
            close(fd)
            throw error
        }
        var error: Int32 = 0
        var size = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &size)
        guard error == 0 else {
            close(fd)
            throw Failure(reason: String(cString: strerror(error)))
        }
        return fd
    }

    /// Waits until `fd` is ready for `events`, or throws at the deadline.
    static func wait(_ fd: Int32, for events: Int16, deadline: UInt64) throws(Failure) {
        while true {
            let now = Clock.monotonic()
            guard now < deadline else { throw Failure(reason: "timed out", timedOut: true) }
            var entry = pollfd(fd: fd, events: events, revents: 0)
            let ready = poll(&entry, 1, Int32(min((deadline - now) / 1_000_000 + 1, 1000)))
            if ready > 0 { return }
            if ready < 0 && errno != EINTR { throw Failure(reason: String(cString: strerror(errno))) }
        }
    }

    /// Sends what the socket takes now, without waiting. Returns the count sent, or -1 once the connection
    /// is gone (never SIGPIPE).
    static func sendSome(_ fd: Int32, _ bytes: [UInt8]) -> Int {
        var sent = 0
        while sent < bytes.count {
            let result = bytes.withUnsafeBytes {
                send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL))
            }
            if result > 0 {
                sent += result
            } else if result < 0 && errno == EINTR {
                continue
            } else if result < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                break
            } else {
                return -1
            }
        }
        return sent
    }

    /// Connects and completes the handshake: the socket, the agent's description from its welcome, and
    /// whatever was read after the welcome. On failure the socket is closed.
    static func openSession(to address: AgentAddress, token: [UInt8], timeoutSeconds: Int)
        throws(AgentConnectError) -> (socket: Int32, agent: String, buffer: FrameBuffer)
    {
        let deadline = Clock.monotonic() + UInt64(timeoutSeconds) * 1_000_000_000
        let socket: Int32
        do {
            socket = try connect(to: address, deadline: deadline)
        } catch {
            throw .unreachable(address, error.reason)
        }
        var buffer = FrameBuffer()
        do {
            try writeAll(socket, Frame.encode(.hello(version: protocolVersion, token: token)), deadline: deadline)
            switch try buffer.readMessage(from: socket, deadline: deadline) {
            case .welcome(_, let agent)?:
                return (socket, agent, buffer)
            case .refused(let version, let reason)?:
                let detail =
                    version == protocolVersion
                    ? reason : "\(reason) (agent protocol \(version), this sysmirror \(protocolVersion))"
                throw AgentConnectError.refused(address, detail)
            case .protocolError(let text)?:
                throw AgentConnectError.refused(address, text)
            case nil:
                throw AgentConnectError.unreachable(address, "the agent closed the connection during the handshake")
            case let other?:
                throw AgentConnectError.unreachable(address, "the agent answered the handshake with a \(other.kind)")
            }
        } catch let error as AgentConnectError {
            close(socket)
            throw error
        } catch let error as Failure {
            close(socket)
            if error.timedOut { throw .noAnswer(address, seconds: timeoutSeconds) }
            throw .unreachable(address, error.reason)
        } catch {
            close(socket)
            throw .unreachable(address, "\(error)")
        }
    }

    /// Sends everything on a blocking socket; false once the connection is gone.
    static func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var sent = 0
        while sent < bytes.count {
            let result = bytes.withUnsafeBytes {
                send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL))
            }
            if result < 0 && errno == EINTR { continue }
            guard result > 0 else { return false }
            sent += result
        }
        return true
    }

    /// Sends everything before the deadline (the handshake).
    static func writeAll(_ fd: Int32, _ bytes: [UInt8], deadline: UInt64) throws(Failure) {
        var rest = bytes
        while !rest.isEmpty {
            let sent = sendSome(fd, rest)
            guard sent >= 0 else { throw Failure(reason: "the agent closed the connection") }
            rest.removeFirst(sent)
            if !rest.isEmpty { try wait(fd, for: Int16(POLLOUT), deadline: deadline) }
        }
    }
}

/// Bytes read from a socket, cut into messages.
public struct FrameBuffer: Sendable {
    private var storage = [UInt8](repeating: 0, count: 2 * Frame.maximumLength + 64)
    private var start = 0
    private var end = 0

    public enum Fill: Sendable { case filled, wouldBlock, closed, failed(Int32) }

    public init() {}

    /// Reads what the socket has (up to the room left, which always fits a whole frame).
    public mutating func fill(from fd: Int32) -> Fill {
        compactIfNeeded()
        let room = storage.count - end
        let count = storage.withUnsafeMutableBytes { raw in read(fd, raw.baseAddress! + end, room) }
        if count > 0 {
            end += count
            return .filled
        }
        if count == 0 { return .closed }
        if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { return .wouldBlock }
        return .failed(errno)
    }

    /// Like `fill`, with recvmsg: also returns a descriptor that came with the bytes (-1 when none did).
    public mutating func fillReceivingDescriptor(from fd: Int32) -> (Fill, Int32) {
        compactIfNeeded()
        let room = storage.count - end
        var received: Int32 = -1
        let count = storage.withUnsafeMutableBytes { raw in
            sysm_receive_with_fd(fd, raw.baseAddress! + end, room, &received)
        }
        if count > 0 {
            end += count
            return (.filled, received)
        }
        if count == 0 { return (.closed, received) }
        if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { return (.wouldBlock, received) }
        return (.failed(errno), received)
    }

    private mutating func compactIfNeeded() {
        if start > 0 && storage.count - end < Frame.maximumLength + 4 {
            storage.withUnsafeMutableBytes { raw in
                raw.baseAddress!.copyMemory(from: raw.baseAddress! + start, byteCount: end - start)
            }
            end -= start
            start = 0
        }
    }

    /// The next whole message, if one is buffered.
    public mutating func next() throws(ProtocolViolation) -> Message? {
        guard end > start else { return nil }
        let (start, end) = (self.start, self.end)
        let parsed = storage.withUnsafeBytes { raw in
            Result { () throws(ProtocolViolation) in try Frame.parse(UnsafeRawBufferPointer(rebasing: raw[start..<end]))
            }
        }
        switch try parsed.get() {
        case .incomplete: return nil
        case .message(let message, let consumed):
            self.start += consumed
            if self.start == self.end { (self.start, self.end) = (0, 0) }
            return message
        }
    }

    /// Blocks (up to the deadline) for one message; nil when the peer closes first.
    mutating func readMessage(from fd: Int32, deadline: UInt64) throws -> Message? {
        while true {
            if let message = try next() { return message }
            try LinkSocket.wait(fd, for: Int16(POLLIN), deadline: deadline)
            switch fill(from: fd) {
            case .closed: return nil
            case .failed(let errno): throw LinkSocket.Failure(reason: String(cString: strerror(errno)))
            case .filled, .wouldBlock: continue
            }
        }
    }
}
