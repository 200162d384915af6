import AgentLink
import AgentProtocol
import CSysmirror
import LinuxSystem
import Logging
import SyscallDecoding

#if canImport(Glibc)
    import Glibc
#endif

/// The socket channel of a unix-socket agent: sockets made in the target's network namespace, passed to
/// the client with SCM_RIGHTS. The client puts them in the program in place of its own (outgoing traffic,
/// docs/architecture.md), so the program's connections leave from the pod with no relay in between.
///
/// Plain threads: SwiftNIO does not pass descriptors. Each connection authenticates as a session does, then
/// its thread joins the target's network namespace once and makes sockets on request. Only TCP and UDP
/// sockets of IPv4 and IPv6 are made: the agent runs as root in the pod, and a raw or netlink socket would
/// hand out more than the program could do there.
final class SocketService: Sendable {
    /// Where the channel listens, beside the main socket.
    static func path(for main: String) -> String { main + ".sockets" }

    let path: String
    let target: Target
    let token: SessionToken
    /// Where stolen ports' listening sockets are found (`stolenListener`).
    let registry: IncomingRegistry
    let logger: Logger
    let listener: OwnedDescriptor

    init(path: String, target: Target, token: SessionToken, registry: IncomingRegistry, logger: Logger)
        throws(SystemCallError)
    {
        self.path = path
        self.target = target
        self.token = token
        self.registry = registry
        self.logger = logger
        _ = unlink(path)  // a socket file an earlier agent left; none is as good
        let socket = try Sockets.make(family: AF_UNIX, type: Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue))
        let previous = umask(0o177)
        defer { umask(previous) }
        try Sockets.bind(socket.raw, to: .unix(path: Array(path.utf8), abstract: false))
        try Sockets.listen(socket.raw, backlog: 64)
        listener = socket
    }

    func start() throws(SystemCallError) {
        _ = try ThreadHandle.start(name: "agent-sockets") { [self] in acceptConnections() }
    }

    func stop() {
        // Wakes the accepting thread, whose accept then fails and ends it; fails only for a socket already shut.
        try? Sockets.shutdownBoth(listener.raw)
        _ = unlink(path)  // gone already is as good
    }

    /// A thread per channel: one per trace session with an agent on this machine, each for the session's life.
    private func acceptConnections() {
        while true {
            var peer: SocketAddress?
            let connection: SharedDescriptor
            do throws(SystemCallError) {
                connection = SharedDescriptor(
                    try Sockets.accept(listener.raw, flags: Int32(SOCK_CLOEXEC.rawValue), peer: &peer))
            } catch where error.errno == .interrupted || error.errno == .connectionAbort {
                continue
            } catch {
                return
            }
            // Dropping the handle detaches the thread, which ends with its connection.
            _ = try? ThreadHandle.start(name: "agent-socket") { [self] in serve(connection.raw) }
        }
    }

    private func send(_ connection: Int32, _ message: Message, fd: Int32 = -1) {
        // A client that went away fails its send; the read that follows sees its end and the connection ends.
        _ = try? Sockets.send(connection, Frame.encode(message), passing: fd >= 0 ? fd : nil)
    }

    private func serve(_ connection: Int32) {
        // A client that says nothing within 10 s of connecting is dropped.
        guard (try? Sockets.setReceiveTimeout(connection, seconds: 10)) != nil else { return }
        var buffer = FrameBuffer()
        guard case .hello(let version, let presented)? = next(connection, &buffer) else { return }
        if version != protocolVersion || !token.accepts(presented) {
            let reason =
                version != protocolVersion
                ? "protocol version mismatch: the client speaks version \(version), this agent version \(protocolVersion)"
                : "wrong token: the client's --token-file does not match the agent's"
            logger.warning("refused a socket channel: \(reason)")
            return send(connection, .refused(version: protocolVersion, reason: reason))
        }
        guard (try? Sockets.setReceiveTimeout(connection, seconds: 0)) != nil else { return }
        if case .process(let pid) = target.spec, let failure = Self.joinNetworkNamespace(of: pid) {
            logger.error("cannot join the target's network namespace: \(failure)")
            return send(
                connection,
                .refused(
                    version: protocolVersion, reason: "the agent cannot join the target's network namespace: \(failure)"
                ))
        }
        send(connection, .welcome(version: protocolVersion, agent: "sysmirror agent sockets for \(target.spec)"))
        while let message = next(connection, &buffer) {
            guard case .request(let id, let request) = message else {
                return send(connection, .protocolError("a socket channel takes requests only"))
            }
            switch Self.answer(request, registry: registry) {
            case .descriptor(let descriptor): send(connection, .response(id: id, .done), fd: descriptor.raw)
            case .refusal(let failure): send(connection, .response(id: id, failure))
            }
        }
    }

    /// What a request gets: a descriptor (closed once passed), or a failure.
    enum Answer {
        case descriptor(SharedDescriptor)
        case refusal(Response)
    }

    static func answer(_ request: Request, registry: IncomingRegistry) -> Answer {
        do throws(SystemCallError) {
            switch request {
            case .connectionEvents:
                return .descriptor(SharedDescriptor(try connectionEvents()))
            case .stolenListener(let port, let family):
                guard let socket = registry.handOver(port, family: family) else {
                    return .refusal(.failure(errno: ENOENT, message: "port \(port) of the pod is not stolen whole"))
                }
                return .descriptor(SharedDescriptor(socket))
            case .socket(let family, let type, let socketProtocol):
                let kind = type & 0xf  // SOCK_STREAM, SOCK_DGRAM; the rest are SOCK_NONBLOCK and SOCK_CLOEXEC
                guard family == AF_INET || family == AF_INET6 else {
                    return .refusal(.failure(errno: EAFNOSUPPORT, message: "IPv4 and IPv6 only"))
                }
                guard kind == Int32(SOCK_STREAM.rawValue) || kind == Int32(SOCK_DGRAM.rawValue) else {
                    return .refusal(.failure(errno: EPROTONOSUPPORT, message: "TCP and UDP only"))
                }
                return .descriptor(
                    SharedDescriptor(
                        try Sockets.make(family: family, type: type | Int32(SOCK_CLOEXEC.rawValue), protocol: socketProtocol)))
            default:
                return .refusal(.failure(errno: ENOSYS, message: "only sockets are made here"))
            }
        } catch {
            return .refusal(.failure(errno: error.errno.rawValue, message: "\(error)"))
        }
    }

    /// The next message, or nil when the peer is gone, silent past the timeout, or garbled.
    private func next(_ connection: Int32, _ buffer: inout FrameBuffer) -> Message? {
        while true {
            do {
                if let message = try buffer.next() { return message }
            } catch {
                send(connection, .protocolError("\(error)"))
                return nil
            }
            switch buffer.fill(from: connection) {
            case .filled: continue
            case .wouldBlock, .closed, .failed: return nil
            }
        }
    }

    /// A NETLINK_SOCK_DIAG socket subscribed to the destruction of IPv4 and IPv6 TCP sockets (each event
    /// carries the socket's cookie and tcp_info). Bound here: binding to the groups may need privileges the
    /// client lacks.
    static func connectionEvents() throws(SystemCallError) -> OwnedDescriptor {
        let socket = try Sockets.make(
            family: AF_NETLINK, type: Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), protocol: 4)  // NETLINK_SOCK_DIAG
        // struct sockaddr_nl (Swift's Glibc lacks it): family, pad, pid, then the groups, as a bit per group:
        // SKNLGRP_INET_TCP_DESTROY (1) and SKNLGRP_INET6_TCP_DESTROY (3).
        let groups: UInt32 = 1 << 0 | 1 << 2
        let address =
            withUnsafeBytes(of: UInt16(AF_NETLINK)) { Array($0) } + [0, 0, 0, 0, 0, 0]
            + withUnsafeBytes(of: groups) { Array($0) }
        try Sockets.bind(socket.raw, raw: address)
        return socket
    }

    /// Moves the calling thread (only) into the target's network namespace; nil on success.
    static func joinNetworkNamespace(of pid: Int32) -> String? {
        if Target.sharesNamespace("net", with: pid) { return nil }
        do throws(SystemCallError) {
            let namespace = OwnedDescriptor(
                taking: try systemCall("open(/proc/\(pid)/ns/net)") { open("/proc/\(pid)/ns/net", O_RDONLY | O_CLOEXEC) })
            let raw = namespace.raw
            _ = try systemCall("setns") { sysm_setns(raw, GNU.newNetworkNamespace) }
            return nil
        } catch {
            return "\(error)"
        }
    }
}
