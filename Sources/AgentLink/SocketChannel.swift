import AgentProtocol
import CSysmirror
import LinuxSystem
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// The client end of an agent's socket channel (a unix-socket agent only): sockets made in the target's
/// network namespace, received with SCM_RIGHTS. A registration on the serving event loop: requests go out
/// as they are asked for and their answers come back in order, each `done` with its descriptor (a recvmsg
/// never reads past the bytes a descriptor came with, so descriptors and answers pair up in order).
public final class SocketChannel: @unchecked Sendable {  // everything but `fd` and `loop` is touched only on `loop`
    public typealias Completion = (Result<SharedDescriptor, Errno>) -> Void

    let fd: SharedDescriptor
    let loop: EventLoop
    private var buffer = FrameBuffer()
    private var waiting: [(id: UInt32, completion: Completion)] = []
    private var received: [SharedDescriptor] = []
    private var nextID: UInt32 = 1
    private var registration: EventLoop.Registration?
    /// Set once the agent is gone: every later request fails with ECONNREFUSED.
    private var closed = false

    private init(fd: consuming OwnedDescriptor, loop: EventLoop) {
        self.fd = SharedDescriptor(fd)
        self.loop = loop
    }

    /// Opens the channel beside the agent's socket at `agentPath` and authenticates (blocking: at the
    /// session's start); from then on it lives on `loop`.
    public static func connect(agentPath: String, token: [UInt8], loop: EventLoop, timeoutSeconds: Int = 5)
        throws(AgentConnectError) -> SocketChannel
    {
        // Nothing comes after the welcome unasked: the rest of the handshake's buffer is empty.
        let (fd, _, _) = try LinkSocket.openSession(
            to: .unix(path: agentPath + ".sockets"), token: token, timeoutSeconds: timeoutSeconds)
        let channel = SocketChannel(fd: OwnedDescriptor(taking: fd), loop: loop)
        loop.execute {
            do {
                channel.registration = try loop.register(channel.fd.raw, for: .readable) { _ in channel.readAnswers() }
            } catch {
                channel.fail()
            }
        }
        return channel
    }

    /// On the loop: a socket made in the pod by `socket(family, type, protocol)`; fails with the errno the
    /// agent met, or ECONNREFUSED once the agent is gone.
    public func makeSocket(family: Int32, type: Int32, protocol socketProtocol: Int32, _ completion: @escaping Completion) {
        ask(.socket(family: family, type: type, protocol: socketProtocol), completion)
    }

    /// On the loop: a netlink socket of the pod that reports each TCP connection's end
    /// (`Request.connectionEvents`).
    public func connectionEvents(_ completion: @escaping Completion) {
        ask(.connectionEvents, completion)
    }

    /// On the loop: the listening socket of `family` of the pod's stolen `port` (a listen the agent answered
    /// `done`), from which sysmirror then accepts the pod's connections of that family itself; fails with
    /// ENOENT when the agent does not steal the port whole.
    public func stolenListener(port: UInt16, family: Int32, _ completion: @escaping Completion) {
        ask(.stolenListener(port: port, family: family), completion)
    }

    private func ask(_ request: Request, _ completion: @escaping Completion) {
        guard !closed else { return completion(.failure(.connectionRefused)) }
        let id = nextID
        nextID &+= 1
        let frame = Frame.encode(.request(id: id, request))
        // A request is a few dozen bytes on a unix socket the agent keeps reading: it is taken whole or the
        // agent is gone.
        guard LinkSocket.sendSome(fd.raw, frame) == frame.count else {
            completion(.failure(.connectionRefused))
            return fail()
        }
        waiting.append((id, completion))
    }

    private func readAnswers() {
        while true {
            var descriptor: OwnedDescriptor?
            let fill = buffer.fillReceivingDescriptor(from: fd.raw, descriptor: &descriptor)
            if let descriptor { received.append(SharedDescriptor(descriptor)) }
            do {
                while let message = try buffer.next() { answer(message) }
            } catch {
                return fail()
            }
            switch fill {
            case .filled: continue
            case .wouldBlock: return
            case .closed, .failed: return fail()
            }
        }
    }

    private func answer(_ message: Message) {
        guard case .response(let id, let response) = message, let index = waiting.firstIndex(where: { $0.id == id })
        else { return }
        let completion = waiting.remove(at: index).completion
        switch response {
        case .done where !received.isEmpty: completion(.success(received.removeFirst()))
        case .failure(let errno, _): completion(.failure(Errno(rawValue: errno)))
        default: completion(.failure(.protocolError))
        }
    }

    /// The agent is gone: what waits fails, and so does everything later.
    private func fail() {
        closed = true
        if let registration { loop.deregister(registration) }
        registration = nil
        received = []
        let failed = waiting
        waiting = []
        for request in failed { request.completion(.failure(.connectionRefused)) }
    }
}
