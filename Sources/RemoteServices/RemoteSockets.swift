import AgentLink
import CSysmirror
import LinuxSystem
import Logging
import Routing
import Synchronization
import SyscallDecoding
import SystemPackage
import UserNotification

#if canImport(Glibc)
    import Glibc
#endif

/// A program's socket as sysmirror sees it for one network call: a descriptor of its own on the same open
/// socket (pidfd_getfd), and what the rules need to know. The descriptor closes with this object.
package final class ProgramSocket: Sendable {
    let fd: OwnedDescriptor
    let number: Int32
    package let facts: SocketFacts
    let type: Int32
    let socketProtocol: Int32
    let nonBlocking: Bool

    init(
        fd: consuming OwnedDescriptor, number: Int32, facts: SocketFacts, type: Int32, socketProtocol: Int32,
        nonBlocking: Bool
    ) {
        self.fd = fd
        self.number = number
        self.facts = facts
        self.type = type
        self.socketProtocol = socketProtocol
        self.nonBlocking = nonBlocking
    }
}

/// Outgoing traffic: a remote connect or send puts, in place of the program's socket, a socket made in the
/// pod's network namespace (the agent's socket channel passes it over), with the program's options, and
/// then the kernel does the rest. The connection leaves from the pod, and the program's traffic runs
/// natively on it: no relay, no copy, and getpeername, SO_ERROR, half-close, resets and DNS answers'
/// source addresses are the kernel's own.
package final class RemoteSockets: Sendable {
    /// Sockets of the pod, ready; nil when the agent cannot pass them (it is not on this machine).
    let pool: SocketPool?
    /// Without a pool: the link that TCP connections made by the agent are relayed on (`LinkStream`).
    let streams: AgentClient?
    /// Without a pool: UDP, and the pod's DNS, on the link.
    package let datagrams: RemoteDatagrams?
    let listener: NotificationListener
    let logger: Logger
    /// Whether the session's link to the agent is up: the pool's sockets would still work after the agent
    /// died, but a session without its agent must not reach the pod.
    let linkIsUp: @Sendable () -> Bool
    /// Logs the end of each TCP connection with its bytes; nil when the agent cannot report them.
    package let connections: ConnectionEvents?
    /// This machine's network namespace, to tell the pod's sockets from the program's own.
    let localNamespace: UInt64
    static let netnsCookie: Int32 = 71  // SO_NETNS_COOKIE (5.14)
    /// Round trips to the agent and handshakes still going on wait here, never on a thread.
    let loop: EventLoop
    /// Where a program's socket connects when its connection is a link connection's (on `loop` only).
    private let pairing = LoopbackPairing()

    package init(
        channel: SocketChannel?, streams: AgentClient?, datagrams: RemoteDatagrams?, listener: NotificationListener,
        loop: EventLoop,
        logger: Logger, connections: ConnectionEvents?, linkIsUp: @escaping @Sendable () -> Bool
    ) throws(SystemCallError) {
        self.streams = streams
        self.datagrams = datagrams
        self.linkIsUp = linkIsUp
        self.connections = connections
        self.loop = loop
        pool = channel.map { SocketPool(channel: $0, loop: loop) }
        self.listener = listener
        self.logger = logger
        let probe = try Sockets.make(family: AF_INET, type: Int32(SOCK_DGRAM.rawValue))
        localNamespace = Self.namespace(of: probe.raw)
    }

    static func namespace(of fd: Int32) -> UInt64 {
        (try? Sockets.option64(fd, netnsCookie)) ?? 0
    }

    /// The socket `number` of thread `pid`, or nil when it is not a socket sysmirror can take (the call then
    /// runs locally and gets the kernel's answer).
    package func inspect(pid: Int32, number: Int32) -> ProgramSocket? {
        guard let fd = ProgramDescriptor.duplicate(pid: pid, number: number),
            let family = try? Sockets.option(fd.raw, SO_DOMAIN),  // fails with ENOTSOCK for anything else
            let type = try? Sockets.option(fd.raw, SO_TYPE)
        else { return nil }
        let transport: Transport? =
            switch type {
            case Int32(SOCK_STREAM.rawValue): .tcp
            case Int32(SOCK_DGRAM.rawValue): .udp
            default: nil
            }
        let facts = SocketFacts(
            family: family, transport: transport, connected: (try? Sockets.peerAddress(fd.raw)) != nil,
            inPod: Self.namespace(of: fd.raw) != localNamespace)
        let socketProtocol = (try? Sockets.option(fd.raw, SO_PROTOCOL)) ?? 0
        let nonBlocking = ((try? fd.statusFlags()) ?? 0) & O_NONBLOCK != 0
        return ProgramSocket(
            fd: fd, number: number, facts: facts, type: type, socketProtocol: socketProtocol, nonBlocking: nonBlocking)
    }

    /// Serves a connect, sendto or sendmsg routed remote; `done` is called once, after the answer.
    ///
    /// On the receiving thread when a socket is ready in the pool and the connect completes at once (a
    /// non-blocking socket always does: EINPROGRESS); a round trip to the agent, or a connect still in
    /// progress on a blocking socket, waits on the serving loop instead.
    package func serve(
        _ notification: Notification, call: DecodedSyscall, socket: ProgramSocket,
        done: @escaping PendingCall.Completion
    ) {
        let answer = PendingCall(notification: notification, listener: listener, logger: logger, done: done)
        if socket.facts.inPod { return answer.proceed() }
        guard linkIsUp() else {
            pool?.drain()
            return answer.fail(ECONNREFUSED, note: "the link to the agent is gone")
        }
        guard let pool else {
            guard let destination = call.socketAddress else { return answer.fail(EINVAL) }
            if socket.facts.transport == .udp, let datagrams {
                return datagrams.serve(notification, call: call, socket: socket, destination: destination, answer)
            }
            guard let streams, call.spec.call == .connect, socket.facts.transport == .tcp else {
                return answer.fail(
                    ENETUNREACH, note: "through a port-forward, TCP and UDP leave from the pod; other sockets do not")
            }
            if destination.port == 53, let names = datagrams?.names {
                return loop.execute { [self] in
                    serveNameServer(socket: socket, server: destination, names: names, answer)
                }
            }
            loop.execute { [self] in
                LinkStream.connect(to: destination, through: streams, on: loop) { [self] result in
                    switch result {
                    case .success(let stream):
                        serveStream(socket: socket, to: destination, stream: stream, through: streams, answer)
                    case .failure(let errno): answer.fail(errno.rawValue)
                    }
                }
            }
            return
        }
        let kind = SocketPool.Kind(family: socket.facts.family, type: socket.type, protocol: socket.socketProtocol)
        if let made = pool.take(kind) {
            return serve(call: call, socket: socket, made: made, answer: answer)
        }
        loop.execute { [self] in
            pool.make(kind) { [self] result in
                switch result {
                case .success(let made): serve(call: call, socket: socket, made: made, answer: answer)
                case .failure(let errno):
                    answer.fail(errno.rawValue, note: "the agent could not make the socket: \(errno)")
                }
            }
        }
    }

    /// Puts `made` (a socket of the pod) in place of the program's socket and lets the call go on with it.
    private func serve(call: DecodedSyscall, socket: ProgramSocket, made: SharedDescriptor, answer: PendingCall) {
        SocketOptions.copy(from: socket.fd.raw, to: made.raw, family: socket.facts.family, type: socket.type)
        // sysmirror connects it without waiting; the program's own mode is set before it gets the answer.
        try? made.descriptor.setNonBlocking(true)  // cannot fail on a socket sysmirror holds
        guard putInPlace(made.raw, of: socket, answer, what: "the pod's socket") else { return }
        guard call.spec.call == .connect, let destination = call.socketAddress else {
            if !socket.nonBlocking { try? made.descriptor.setNonBlocking(false) }
            return answer.proceed(note: "from the pod")  // sendto, sendmsg: the kernel sends on the new socket
        }
        var error: Int32 = 0
        do throws(SystemCallError) {
            try Sockets.connect(made.raw, to: destination)
        } catch let failure {
            error = failure.errno.rawValue
        }
        // Tracked for the log and for resets after the answer where it can be: the program need not wait.
        if (error == 0 || error == EINPROGRESS) && socket.facts.transport == .tcp {
            connections?.track(
                made.raw, name: "connection to \(destination)", pid: answer.notification.pid, number: socket.number)
        }
        if socket.nonBlocking || error != EINPROGRESS {
            if !socket.nonBlocking { try? made.descriptor.setNonBlocking(false) }
            return error == 0 ? answer.succeed(0) : answer.fail(error)
        }
        // A blocking connect: its result is the handshake's, whenever it ends; the loop waits for it.
        loop.execute { [loop] in
            // A registration that fails leaves SO_ERROR to say how the connect went, as a wake-up would.
            loop.whenReady(made.raw, for: .writable) { _ in Self.finishBlockingConnect(made, to: destination, answer) }
        }
    }

    /// A TCP connect relayed on the link: once the pod's end is connected, the program's socket is connected
    /// to a loopback listener of sysmirror's, and that connection is joined to the link's stream. The
    /// connect succeeds at once, also for a non-blocking socket (Go and others take an immediate success).
    /// Its peer, as getpeername tells, is sysmirror's loopback listener.
    private func serveStream(
        socket: ProgramSocket, to destination: SocketAddress, stream: LinkStream, through link: AgentClient,
        _ answer: PendingCall
    ) {
        guard listener.isPending(answer.notification.id) else {
            stream.abandon()
            return answer.gone()
        }
        let ours: SharedDescriptor
        do throws(SystemCallError) {
            ours = try pairing.connect(socket.fd.raw, family: socket.facts.family)
        } catch {
            stream.abandon()
            return answer.fail(EIO, note: "could not connect the program's socket to sysmirror's relay: \(error)")
        }
        let pid = answer.notification.pid
        stream.relay(with: ours) { [logger] outcome in
            let what =
                "connection to \(destination) (pid \(pid)) reset after \(outcome.fromSocket) bytes out, \(outcome.fromPod) in"
            switch outcome.cut {
            case .link(let reason): logger.warning("\(what): \(reason)")  // a cut the user should hear of
            case .pod(let reason): logger.info("\(what): \(reason)")
            case .program, nil: break
            }
        }
        answer.succeed(0, note: "through \(link.address)")
    }

    /// A TCP connection to a name server of the pod: sysmirror answers it itself (DNSStream), from the pod's
    /// DNS through the link.
    private func serveNameServer(socket: ProgramSocket, server: SocketAddress, names: PodNames, _ answer: PendingCall) {
        guard listener.isPending(answer.notification.id) else { return answer.gone() }
        do throws(SystemCallError) {
            DNSStream.start(
                on: loop, try pairing.connect(socket.fd.raw, family: socket.facts.family), names: names, server: server)
            answer.succeed(0, note: "the pod's DNS, answered through \(names.client.address)")
        } catch {
            answer.fail(EIO, note: "could not connect the program's socket to sysmirror's name service: \(error)")
        }
    }

    /// Puts `replacement` at the program's socket's number, keeping its close-on-exec flag. False when the
    /// call went away or the swap failed: the call has its answer then, and `replacement` is the caller's.
    private func putInPlace(_ replacement: Int32, of socket: ProgramSocket, _ answer: PendingCall, what: String) -> Bool
    {
        let notification = answer.notification
        guard listener.isPending(notification.id) else {
            answer.gone()
            return false
        }
        do throws(SystemCallError) {
            try listener.replace(
                notification.id, descriptor: socket.number, with: replacement,
                closeOnExec: Self.isCloseOnExec(pid: notification.pid, fd: socket.number))
            return true
        } catch {
            answer.fail(error.errno.rawValue, note: "could not put \(what) in place: \(error)")
            return false
        }
    }

    /// Once the handshake is over: its result, and (by connecting again, which then returns 0) the socket
    /// marked connected, as a blocking connect leaves it, so that a later connect gets EISCONN.
    static func finishBlockingConnect(_ fd: SharedDescriptor, to address: SocketAddress, _ answer: PendingCall) {
        let error = (try? Sockets.pendingError(fd.raw)) ?? EIO
        if error == 0 { try? Sockets.connect(fd.raw, to: address) }  // succeeds: the handshake is over
        try? fd.descriptor.setNonBlocking(false)  // cannot fail on a socket sysmirror holds
        if error == 0 { answer.succeed(0) } else { answer.fail(error) }
    }

    /// Whether the program's descriptor has FD_CLOEXEC: /proc shows it among the flags (O_CLOEXEC).
    static func isCloseOnExec(pid: Int32, fd: Int32) -> Bool {
        guard let flags = ProcessTree.field("flags", in: "/proc/\(pid)/fdinfo/\(fd)").flatMap({ Int($0, radix: 8) })
        else { return false }
        return flags & Int(O_CLOEXEC) != 0
    }
}

/// The socket options a program may set before connecting, copied onto the pod's socket; only those that
/// differ from a fresh socket's, so that defaults (buffer autotuning above all) stay defaults.
enum SocketOptions {
    /// (level, name, size): integers, and `struct linger` / `struct timeval` by size.
    static let copied: [(Int32, Int32, Int)] = [
        (SOL_SOCKET, SO_KEEPALIVE, 4), (SOL_SOCKET, SO_RCVBUF, 4), (SOL_SOCKET, SO_SNDBUF, 4),
        (SOL_SOCKET, SO_LINGER, 8), (SOL_SOCKET, SO_BROADCAST, 4), (SOL_SOCKET, SO_PRIORITY, 4),
        (SOL_SOCKET, SO_RCVTIMEO, 16), (SOL_SOCKET, SO_SNDTIMEO, 16), (SOL_SOCKET, SO_REUSEADDR, 4),
        (SOL_SOCKET, SO_REUSEPORT, 4), (Int32(IPPROTO_TCP), TCP_NODELAY, 4),
        // TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, TCP_USER_TIMEOUT
        (Int32(IPPROTO_TCP), 4, 4), (Int32(IPPROTO_TCP), 5, 4), (Int32(IPPROTO_TCP), 6, 4), (Int32(IPPROTO_TCP), 18, 4),
        (Int32(IPPROTO_IP), IP_TOS, 4), (Int32(IPPROTO_IP), IP_TTL, 4), (Int32(IPPROTO_IPV6), IPV6_V6ONLY, 4),
        (Int32(IPPROTO_IPV6), IPV6_TCLASS, 4),
    ]

    /// A fresh socket's values of `copied`, per family and type, read once.
    private static let defaults = Mutex<[SocketPool.Kind: [[UInt8]?]]>([:])

    static func copy(from source: Int32, to target: Int32, family: Int32, type: Int32) {
        let fresh = freshValues(family: family, type: type)
        for (index, (level, name, size)) in copied.enumerated() {
            if family == AF_INET && level == Int32(IPPROTO_IPV6) { continue }
            if family == AF_INET6 && level == Int32(IPPROTO_IP) { continue }
            var value = [UInt8](repeating: 0, count: size)
            var length = socklen_t(size)
            guard getsockopt(source, level, name, &value, &length) == 0, value != fresh[index] else { continue }
            if level == SOL_SOCKET && (name == SO_RCVBUF || name == SO_SNDBUF) {
                // The kernel doubles what it is given, and reports the doubled value.
                let doubled = value.withUnsafeBytes { $0.load(as: Int32.self) }
                withUnsafeBytes(of: doubled / 2) { value = Array($0) }
            }
            _ = setsockopt(target, level, name, value, length)
        }
    }

    static func freshValues(family: Int32, type: Int32) -> [[UInt8]?] {
        let kind = SocketPool.Kind(family: family, type: type, protocol: 0)
        if let known = defaults.withLock({ $0[kind] }) { return known }
        let fresh = socket(family, type | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { if fresh >= 0 { close(fresh) } }
        let values = copied.map { (level, name, size) -> [UInt8]? in
            var value = [UInt8](repeating: 0, count: size)
            var length = socklen_t(size)
            return fresh >= 0 && getsockopt(fresh, level, name, &value, &length) == 0 ? value : nil
        }
        defaults.withLock { $0[kind] = values }
        return values
    }
}

/// Sockets made in the pod ahead of use, a few of each kind, so that a connect needs no round trip to the
/// agent: the pool refills on the serving loop after each take.
final class SocketPool: @unchecked Sendable {  // `filling` is touched only on `loop`; `ready` is locked
    struct Kind: Hashable, Sendable {
        let family: Int32
        let type: Int32
        let `protocol`: Int32
    }

    static let depth = 2
    /// Made ready when the session starts.
    static let common = [
        Kind(family: AF_INET, type: Int32(SOCK_STREAM.rawValue), protocol: Int32(IPPROTO_TCP)),
        Kind(family: AF_INET, type: Int32(SOCK_DGRAM.rawValue), protocol: Int32(IPPROTO_UDP)),
        Kind(family: AF_INET6, type: Int32(SOCK_STREAM.rawValue), protocol: Int32(IPPROTO_TCP)),
        Kind(family: AF_INET6, type: Int32(SOCK_DGRAM.rawValue), protocol: Int32(IPPROTO_UDP)),
    ]

    let channel: SocketChannel
    let loop: EventLoop
    private let ready = Mutex<[Kind: [SharedDescriptor]]>([:])
    /// Requests under way, by kind.
    private var filling: [Kind: Int] = [:]

    init(channel: SocketChannel, loop: EventLoop) {
        self.channel = channel
        self.loop = loop
        for kind in Self.common { refill(kind) }
    }

    /// A ready socket of `kind`, if there is one.
    func take(_ kind: Kind) -> SharedDescriptor? {
        let taken = ready.withLock { $0[kind]?.popLast() }
        refill(kind)
        return taken
    }

    /// Lets go of every ready socket.
    func drain() {
        ready.withLock { $0 = [:] }
    }

    /// On the loop: a new socket of `kind`, made now (a round trip to the agent).
    func make(_ kind: Kind, _ completion: @escaping SocketChannel.Completion) {
        channel.makeSocket(family: kind.family, type: kind.type, protocol: kind.protocol, completion)
    }

    private func refill(_ kind: Kind) {
        loop.execute { [self] in
            var failed = false  // a channel that is gone answers at once: no retrying then
            while !failed && ready.withLock({ $0[kind]?.count ?? 0 }) + filling[kind, default: 0] < Self.depth {
                filling[kind, default: 0] += 1
                make(kind) { [self] result in
                    filling[kind, default: 0] -= 1
                    switch result {
                    case .success(let made): ready.withLock { $0[kind, default: []].append(made) }
                    case .failure: failed = true
                    }
                }
            }
        }
    }
}
