import LinuxSystem
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A session whose handshake is done and that no client reads yet. Through a port-forward every new
/// connection pays kubectl's stream set-up (two round trips) before its first byte, so the connection that
/// found the agent answering becomes the session's link instead of being closed and opened again.
/// Taken once, by `AgentClient.connect(over:)`; closed when dropped untaken.
public final class OpenedSession: Sendable {
    /// What the agent said about itself in the handshake.
    let agent: String
    private let parts: Mutex<(socket: Int32, buffer: FrameBuffer)?>

    init(socket: Int32, agent: String, buffer: FrameBuffer) {
        self.agent = agent
        parts = Mutex((socket, buffer))
    }

    /// Connects and completes the handshake, and asks nothing yet.
    public static func open(to address: AgentAddress, token: [UInt8], timeoutSeconds: Int = 5)
        throws(AgentConnectError) -> OpenedSession
    {
        let (socket, agent, buffer) = try LinkSocket.openSession(
            to: address, token: token, timeoutSeconds: timeoutSeconds)
        return OpenedSession(socket: socket, agent: agent, buffer: buffer)
    }

    /// The socket and what was read past the welcome, for the one client that reads them; nil after the first.
    func take() -> (socket: Int32, buffer: FrameBuffer)? {
        parts.withLock { parts in
            defer { parts = nil }
            return parts
        }
    }

    /// Takes the session and writes `pipelined` on it: what `LinkSocket.openSession` gives. Fails when it was
    /// taken already or has ended (the socket is closed then).
    func sending(_ pipelined: [UInt8], timeoutSeconds: Int) throws(LinkSocket.Failure) -> (
        socket: Int32, agent: String, buffer: FrameBuffer
    ) {
        guard let (socket, buffer) = take() else { throw LinkSocket.Failure(reason: "taken already") }
        do {
            try LinkSocket.writeAll(
                socket, pipelined, deadline: Clock.monotonic() + UInt64(timeoutSeconds) * 1_000_000_000)
        } catch {
            close(socket)
            throw error
        }
        return (socket, agent, buffer)
    }

    deinit {
        if let (socket, _) = take() { close(socket) }
    }
}
