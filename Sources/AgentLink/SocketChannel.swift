import AgentProtocol
import CSysmirror
import LinuxSystem
import Synchronization
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// The client end of an agent's socket channel (a unix-socket agent only): sockets made in the target's
/// network namespace, received with SCM_RIGHTS. One request at a time; a request takes one round trip.
public final class SocketChannel: Sendable {
    let fd: Int32
    private let state = Mutex<(buffer: FrameBuffer, nextID: UInt32)>((FrameBuffer(), 1))

    init(fd: Int32) { self.fd = fd }

    deinit { close(fd) }

    /// Opens the channel beside the agent's socket at `agentPath` and authenticates.
    public static func connect(agentPath: String, token: [UInt8], timeoutSeconds: Int = 5) throws(AgentConnectError)
        -> SocketChannel
    {
        // Nothing comes after the welcome unasked: the rest of the handshake's buffer is empty.
        let (fd, _, _) = try LinkSocket.openSession(
            to: .unix(path: agentPath + ".sockets"), token: token, timeoutSeconds: timeoutSeconds)
        // Requests wait for their answer from here on.
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        return SocketChannel(fd: fd)
    }

    /// A socket made in the pod by `socket(family, type, protocol)`; throws the errno the agent met, or
    /// ECONNREFUSED once the agent is gone.
    public func makeSocket(family: Int32, type: Int32, protocol socketProtocol: Int32) throws(Errno) -> Int32 {
        try receiveDescriptor(for: .socket(family: family, type: type, protocol: socketProtocol))
    }

    /// A netlink socket of the pod that reports each TCP connection's end (`Request.connectionEvents`).
    public func connectionEvents() throws(Errno) -> Int32 {
        try receiveDescriptor(for: .connectionEvents)
    }

    func receiveDescriptor(for request: Request) throws(Errno) -> Int32 {
        try state.withLock { state throws(Errno) -> Int32 in
            let id = state.nextID
            state.nextID &+= 1
            let request = Frame.encode(.request(id: id, request))
            guard LinkSocket.sendAll(fd, request) else { throw Errno(rawValue: ECONNREFUSED) }
            var received: Int32 = -1
            while true {
                do {
                    if let message = try state.buffer.next() {
                        switch message {
                        case .response(id, .done) where received >= 0: return received
                        case .response(id, .failure(let errno, _)): throw Errno(rawValue: errno)
                        default: break
                        }
                    }
                } catch let errno as Errno {
                    throw errno
                } catch {
                    throw Errno(rawValue: EPROTO)
                }
                let (fill, descriptor) = state.buffer.fillReceivingDescriptor(from: fd)
                if descriptor >= 0 {
                    if received >= 0 { Glibc.close(received) }
                    received = descriptor
                }
                switch fill {
                case .filled, .wouldBlock: continue
                case .closed, .failed:
                    if received >= 0 { Glibc.close(received) }
                    throw Errno(rawValue: ECONNREFUSED)
                }
            }
        }
    }
}
