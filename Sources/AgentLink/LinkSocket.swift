import AgentProtocol
import CSysmirror
import LinuxSystem
import SyscallDecoding

#if canImport(Glibc)
    import Glibc
#endif

/// The client's socket calls: a non-blocking stream socket to the agent, unix or TCP.
enum LinkSocket {
    struct Failure: Error {
        let reason: String
        var timedOut = false
    }

    /// Connects before `deadline` (monotonic ns): every address of the host in turn. For TCP the socket gets
    /// TCP_NODELAY (requests are small and must not wait for each other) and keep-alives.
    static func connect(to address: AgentAddress, deadline: UInt64) throws(Failure) -> Int32 {
        var last = Failure(reason: "no address for \(address)")
        for candidate in try resolve(address) {
            do {
                let fd = try startConnect(to: candidate)
                do {
                    try wait(fd.raw, for: Int16(POLLOUT), deadline: deadline)
                    let error = try Sockets.pendingError(fd.raw)
                    guard error == 0 else { throw Failure(reason: String(cString: strerror(error))) }
                } catch let error as SystemCallError {
                    throw Failure(reason: "\(error)")
                }
                return fd.release()
            } catch let error as Failure {
                last = error
            } catch {
                last = Failure(reason: "\(error)")
            }
        }
        throw last
    }

    /// The socket addresses an agent address names (a TCP host's, through the resolver).
    static func resolve(_ address: AgentAddress) throws(Failure) -> [SocketAddress] {
        switch address {
        case .unix(let path):
            return [.unix(path: Array(path.utf8), abstract: false)]
        case .tcp(let host, let port):
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            hints.ai_flags = AI_NUMERICSERV
            var list: UnsafeMutablePointer<addrinfo>?
            let status = getaddrinfo(host, String(port), &hints, &list)
            guard status == 0 else { throw Failure(reason: String(cString: gai_strerror(status))) }
            defer { freeaddrinfo(list) }
            var addresses: [SocketAddress] = []
            var entry = list
            while let info = entry?.pointee {
                let bytes = UnsafeRawBufferPointer(start: info.ai_addr, count: Int(info.ai_addrlen))
                if let address = SocketAddress(Array(bytes)) { addresses.append(address) }
                entry = info.ai_next
            }
            return addresses
        }
    }

    /// A non-blocking socket whose connect to the agent is under way (or done).
    static func startConnect(to address: SocketAddress) throws(Failure) -> OwnedDescriptor {
        do throws(SystemCallError) {
            let fd = try Sockets.make(
                family: address.family, type: Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue))
            if case .unix = address {
            } else {
                try Sockets.setNoDelay(fd.raw)
                try Sockets.setOption(fd.raw, SO_KEEPALIVE, 1)
            }
            do throws(SystemCallError) {
                try Sockets.connect(fd.raw, to: address)
            } catch  where error.errno == .nowInProgress || error.errno == .resourceTemporarilyUnavailable {
                // Under way: writable when it is done.
            } catch {
                throw error
            }
            return fd
        } catch {
            throw Failure(reason: String(cString: strerror(error.errno.rawValue)))
        }
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
    /// whatever was read after the welcome. `pipelined` frames go with the hello, in the same write, so
    /// their answers come in the handshake's round trip. On failure the socket is closed.
    static func openSession(to address: AgentAddress, token: [UInt8], timeoutSeconds: Int, pipelined: [UInt8] = [])
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
            try writeAll(
                socket, Frame.encode(.hello(version: protocolVersion, token: token)) + pipelined, deadline: deadline)
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
///
/// It starts small and grows only when a frame needs it, up to room for two of the largest: most links carry
/// small frames, and a buffer made at its largest (2 MiB) costs each new link 512 zeroed pages, and the
/// first read of a copied one (its storage shared) a copy of them, a millisecond on a session's first
/// lookup.
public struct FrameBuffer: Sendable {
    static let initialSize = 64 * 1024
    static let largestSize = 2 * Frame.maximumLength + 64
    private var storage = [UInt8](repeating: 0, count: FrameBuffer.initialSize)
    private var start = 0
    private var end = 0

    public enum Fill: Sendable { case filled, wouldBlock, closed, failed(Int32) }

    public init() {}

    /// Reads what the socket has, up to the room left (never none: `compactIfNeeded`).
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

    /// Like `fill`, with recvmsg: a descriptor that came with the bytes goes to `descriptor`.
    public mutating func fillReceivingDescriptor(from fd: Int32, descriptor: inout OwnedDescriptor?) -> Fill {
        compactIfNeeded()
        let room = storage.count - end
        let end = self.end
        let received = storage.withUnsafeMutableBytes { raw in
            Result { () throws(SystemCallError) in
                try Sockets.receive(
                    fd, into: UnsafeMutableRawBufferPointer(rebasing: raw[end..<(end + room)]), descriptor: &descriptor)
            }
        }
        switch received {
        case .success(let count):
            self.end += count
            return count > 0 ? .filled : .closed
        case .failure(let error):
            return error.errno == .resourceTemporarilyUnavailable || error.errno == .interrupted
                ? .wouldBlock : .failed(error.errno.rawValue)
        }
    }

    /// Makes room to read into: moves a partial frame to the front when the room behind it is less than half,
    /// and doubles the storage when a partial frame fills it (the callers have taken every whole one).
    private mutating func compactIfNeeded() {
        if start > 0 && storage.count - end < storage.count / 2 {
            storage.withUnsafeMutableBytes { raw in
                raw.baseAddress!.copyMemory(from: raw.baseAddress! + start, byteCount: end - start)
            }
            end -= start
            start = 0
        }
        if end == storage.count && storage.count < Self.largestSize {
            storage.append(contentsOf: repeatElement(0, count: min(storage.count, Self.largestSize - storage.count)))
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
