import AgentProtocol
import LinuxSystem
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Link connections that carry one TCP connection's bytes each (docs/protocol.md): outgoing TCP through an
/// agent that cannot pass sockets (reached through a port-forward), opened with `connect`, where the
/// program gets this socket in place of its own; and the pod's incoming connections, opened with
/// `takeIncoming`.
public struct StreamConnector: Sendable {
    public let address: AgentAddress
    let token: [UInt8]

    public init(address: AgentAddress, token: [UInt8]) {
        self.address = address
        self.token = token
    }

    /// A connection from the pod to `destination` (a sockaddr_in or sockaddr_in6); throws the errno the
    /// pod's connect got, or ECONNREFUSED when the agent cannot be reached.
    public func open(_ destination: [UInt8], timeoutSeconds: Int = 35) throws(Errno) -> Int32 {
        try open(.connect(address: destination), timeoutSeconds: timeoutSeconds)
    }

    /// The link connection that carries the pod's incoming connection `connection`; throws the errno the
    /// agent answered (ENOENT: it went to the pod's application), or ECONNREFUSED.
    public func take(incoming connection: UInt64, timeoutSeconds: Int = 10) throws(Errno) -> Int32 {
        try open(.takeIncoming(connection: connection), timeoutSeconds: timeoutSeconds)
    }

    /// A link connection whose first request is `request`, and which carries a stream after its `done`.
    func open(_ request: Request, timeoutSeconds: Int) throws(Errno) -> Int32 {
        let deadline = Clock.monotonic() + UInt64(timeoutSeconds) * 1_000_000_000
        let fd: Int32
        do {
            fd = try LinkSocket.connect(to: address, deadline: deadline)
        } catch {
            throw .connectionRefused
        }
        do {
            // Both at once: one round trip through the port-forward instead of two.
            try LinkSocket.writeAll(
                fd,
                Frame.encode(.hello(version: protocolVersion, token: token))
                    + Frame.encode(.request(id: 1, request)), deadline: deadline)
            guard case .welcome = try Self.readFrame(fd, deadline: deadline) else { throw Errno.connectionRefused }
            switch try Self.readFrame(fd, deadline: deadline) {
            case .response(_, .done): return fd
            case .response(_, .failure(let errno, _)): throw Errno(rawValue: errno)
            default: throw Errno.connectionRefused
            }
        } catch {
            close(fd)
            throw error as? Errno ?? .connectionRefused
        }
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
