import AgentLink
import AgentProtocol
import CSysmirror
import LinuxSystem
import Logging

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
    let listener: Int32

    init(path: String, target: Target, token: SessionToken, registry: IncomingRegistry, logger: Logger)
        throws(SystemCallError)
    {
        self.path = path
        self.target = target
        self.token = token
        self.registry = registry
        self.logger = logger
        unlink(path)
        let fd = try systemCall("socket(AF_UNIX)") {
            socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.enumerated() where index < raw.count - 1 { raw[index] = byte }
        }
        let previous = umask(0o177)
        defer { umask(previous) }
        do {
            _ = try systemCall("bind(\(path))") {
                withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                    }
                }
            }
            _ = try systemCall("listen") { listen(fd, 64) }
        } catch {
            close(fd)
            throw error
        }
        listener = fd
    }

    func start() throws(SystemCallError) {
        _ = try ThreadHandle.start(name: "agent-sockets") { [self] in acceptConnections() }
    }

    func stop() {
        shutdown(listener, Int32(SHUT_RDWR))
        unlink(path)
    }

    private func acceptConnections() {
        while true {
            // accept4 needs _GNU_SOURCE; the agent never forks, so close-on-exec set afterwards is as good.
            let connection = accept(listener, nil, nil)
            if connection < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                return
            }
            _ = fcntl(connection, F_SETFD, FD_CLOEXEC)
            do {
                _ = try ThreadHandle.start(name: "agent-socket") { [self] in serve(connection) }
            } catch {
                close(connection)
            }
        }
    }

    private func send(_ connection: Int32, _ message: Message, fd: Int32 = -1) {
        // A client that went away fails its send; the read that follows sees its end and the connection ends.
        _ = try? Sockets.send(connection, Frame.encode(message), passing: fd >= 0 ? fd : nil)
    }

    private func serve(_ connection: Int32) {
        defer { close(connection) }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(connection, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
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
        timeout = timeval(tv_sec: 0, tv_usec: 0)
        setsockopt(connection, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
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
            if case .request(let id, .connectionEvents) = message {
                let events = Self.connectionEvents()
                if events < 0 {
                    send(connection, .response(id: id, .failure(errno: errno, message: "sock_diag: \(currentErrno())")))
                } else {
                    send(connection, .response(id: id, .done), fd: events)
                    close(events)
                }
                continue
            }
            if case .request(let id, .stolenListener(let port)) = message {
                if let socket = registry.handOver(port) {
                    send(connection, .response(id: id, .done), fd: socket.raw)
                } else {
                    send(
                        connection,
                        .response(id: id, .failure(errno: ENOENT, message: "port \(port) of the pod is not stolen whole")))
                }
                continue
            }
            guard case .request(let id, .socket(let family, let type, let socketProtocol)) = message else {
                if case .request(let id, _) = message {
                    send(connection, .response(id: id, .failure(errno: ENOSYS, message: "only sockets are made here")))
                    continue
                }
                return send(connection, .protocolError("a socket channel takes socket requests only"))
            }
            let kind = type & 0xf  // SOCK_STREAM, SOCK_DGRAM; the rest are SOCK_NONBLOCK and SOCK_CLOEXEC
            guard family == AF_INET || family == AF_INET6 else {
                send(connection, .response(id: id, .failure(errno: EAFNOSUPPORT, message: "IPv4 and IPv6 only")))
                continue
            }
            guard kind == Int32(SOCK_STREAM.rawValue) || kind == Int32(SOCK_DGRAM.rawValue) else {
                send(connection, .response(id: id, .failure(errno: EPROTONOSUPPORT, message: "TCP and UDP only")))
                continue
            }
            let made = socket(family, type | Int32(SOCK_CLOEXEC.rawValue), socketProtocol)
            if made < 0 {
                send(connection, .response(id: id, .failure(errno: errno, message: "")))
            } else {
                send(connection, .response(id: id, .done), fd: made)
                close(made)
            }
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
    /// client lacks. -1 with errno on failure.
    static func connectionEvents() -> Int32 {
        let fd = socket(AF_NETLINK, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 4)  // NETLINK_SOCK_DIAG
        guard fd >= 0 else { return -1 }
        // struct sockaddr_nl (Swift's Glibc lacks it): family, pad, pid, then the groups, as a bit per group:
        // SKNLGRP_INET_TCP_DESTROY (1) and SKNLGRP_INET6_TCP_DESTROY (3).
        var address: (UInt16, UInt16, UInt32, UInt32) = (UInt16(AF_NETLINK), 0, 0, 1 << 0 | 1 << 2)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, 12) }
        }
        guard bound == 0 else {
            let saved = errno
            close(fd)
            errno = saved
            return -1
        }
        return fd
    }

    /// Moves the calling thread (only) into the target's network namespace; nil on success.
    static func joinNetworkNamespace(of pid: Int32) -> String? {
        if Target.sharesNamespace("net", with: pid) { return nil }
        let namespace = open("/proc/\(pid)/ns/net", O_RDONLY | O_CLOEXEC)
        guard namespace >= 0 else { return "\(currentErrno())" }
        defer { close(namespace) }
        return sysm_setns(namespace, GNU.newNetworkNamespace) == 0 ? nil : "\(currentErrno())"
    }
}
