import AgentLink
import CSysmirror
import Dispatch
import LinuxSystem
import Logging
import Routing
import Synchronization
import SyscallDecoding
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// A program's socket as sysmirror sees it for one network call: a descriptor of its own on the same open
/// socket (pidfd_getfd), and what the rules need to know. The descriptor closes with this object.
final class ProgramSocket: Sendable {
    let fd: Int32
    let number: Int32
    let facts: SocketFacts
    let type: Int32
    let socketProtocol: Int32
    let nonBlocking: Bool

    init(fd: Int32, number: Int32, facts: SocketFacts, type: Int32, socketProtocol: Int32, nonBlocking: Bool) {
        self.fd = fd
        self.number = number
        self.facts = facts
        self.type = type
        self.socketProtocol = socketProtocol
        self.nonBlocking = nonBlocking
    }

    deinit { close(fd) }
}

/// Outgoing traffic: a remote connect or send puts, in place of the program's socket, a socket made in the
/// pod's network namespace (the agent's socket channel passes it over), with the program's options, and
/// then the kernel does the rest. The connection leaves from the pod, and the program's traffic runs
/// natively on it: no relay, no copy, and getpeername, SO_ERROR, half-close, resets and DNS answers'
/// source addresses are the kernel's own.
final class RemoteSockets: Sendable {
    /// Sockets of the pod, ready; nil when the agent cannot pass them (it is not on this machine).
    let pool: SocketPool?
    /// Without a pool: TCP connections made by the agent, each a link connection of its own.
    let streams: StreamConnector?
    let listener: NotificationListener
    let logger: Logger
    /// Whether the session's link to the agent is up: the pool's sockets would still work after the agent
    /// died, but a session without its agent must not reach the pod.
    let linkIsUp: @Sendable () -> Bool
    /// Logs the end of each TCP connection with its bytes; nil when the agent cannot report them.
    let connections: ConnectionEvents?
    /// This machine's network namespace, to tell the pod's sockets from the program's own.
    let localNamespace: UInt64
    static let netnsCookie: Int32 = 71  // SO_NETNS_COOKIE (5.14)

    init(
        channel: SocketChannel?, streams: StreamConnector?, listener: NotificationListener, logger: Logger,
        connections: ConnectionEvents?, linkIsUp: @escaping @Sendable () -> Bool
    ) {
        self.streams = streams
        self.linkIsUp = linkIsUp
        self.connections = connections
        pool = channel.map(SocketPool.init)
        self.listener = listener
        self.logger = logger
        let probe = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        localNamespace = Self.namespace(of: probe)
        close(probe)
    }

    static func namespace(of fd: Int32) -> UInt64 {
        var cookie: UInt64 = 0
        var size = socklen_t(8)
        return getsockopt(fd, SOL_SOCKET, netnsCookie, &cookie, &size) == 0 ? cookie : 0
    }

    /// The socket `number` of thread `pid`, or nil when it is not a socket sysmirror can take (the call then
    /// runs locally and gets the kernel's answer).
    func inspect(pid: Int32, number: Int32) -> ProgramSocket? {
        guard let fd = ProgramDescriptor.duplicate(pid: pid, number: number) else { return nil }
        func option(_ name: Int32) -> Int32 { ProgramDescriptor.socketOption(fd, name) }
        let family = option(SO_DOMAIN)
        let type = option(SO_TYPE)
        guard family >= 0 else {  // not a socket
            close(fd)
            return nil
        }
        let transport: Transport? =
            switch type {
            case Int32(SOCK_STREAM.rawValue): .tcp
            case Int32(SOCK_DGRAM.rawValue): .udp
            default: nil
            }
        var peer = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let connected = withUnsafeMutablePointer(to: &peer) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &length) == 0 }
        }
        let facts = SocketFacts(
            family: family, transport: transport, connected: connected,
            inPod: Self.namespace(of: fd) != localNamespace)
        return ProgramSocket(
            fd: fd, number: number, facts: facts, type: type, socketProtocol: option(SO_PROTOCOL),
            nonBlocking: fcntl(fd, F_GETFL) & O_NONBLOCK != 0)
    }

    /// Serves a connect, sendto or sendmsg routed remote; `done` is called once, after the answer.
    ///
    /// On the receiving thread when a socket is ready in the pool and the connect completes at once (a
    /// non-blocking socket always does: EINPROGRESS); a round trip to the agent or a connect still in
    /// progress on a blocking socket waits on a worker instead.
    func serve(
        _ notification: Notification, call: DecodedSyscall, socket: ProgramSocket,
        done: @escaping RemoteFiles.Completion
    ) {
        let answer = Answer(notification: notification, listener: listener, done: done)
        if socket.facts.inPod { return answer.proceed() }
        guard linkIsUp() else {
            pool?.drain()
            return answer.fail(ECONNREFUSED, note: "the link to the agent is gone")
        }
        guard let pool else {
            guard let streams, call.spec.name == "connect", socket.facts.transport == .tcp,
                case .bytes(let address) = call.values[1]
            else {
                return answer.fail(
                    ENETUNREACH,
                    note: "through a port-forward only TCP connections leave from the pod; UDP needs the agent on this machine"
                )
            }
            return DispatchQueue.global().async { [self] in
                serveStream(notification, socket: socket, destination: address, streams: streams, answer: answer)
            }
        }
        let kind = SocketPool.Kind(family: socket.facts.family, type: socket.type, protocol: socket.socketProtocol)
        if let made = pool.take(kind) {
            return serve(notification, call: call, socket: socket, made: made, answer: answer)
        }
        DispatchQueue.global().async { [self] in
            do throws(Errno) {
                let made = try pool.make(kind)
                serve(notification, call: call, socket: socket, made: made, answer: answer)
            } catch {
                answer.fail(error.rawValue, note: "the agent could not make the socket: \(error)")
            }
        }
    }

    /// Puts `made` (a socket of the pod, which this closes) in place of the program's socket and lets the
    /// call go on with it.
    private func serve(
        _ notification: Notification, call: DecodedSyscall, socket: ProgramSocket, made: Int32, answer: Answer
    ) {
        SocketOptions.copy(from: socket.fd, to: made, family: socket.facts.family, type: socket.type)
        // sysmirror connects it without waiting; the program's own mode is set before it gets the answer.
        _ = fcntl(made, F_SETFL, fcntl(made, F_GETFL) | O_NONBLOCK)
        guard putInPlace(made, of: socket, notification, answer, what: "the pod's socket") else {
            close(made)
            return
        }
        guard call.spec.name == "connect", case .bytes(let address) = call.values[1] else {
            if !socket.nonBlocking { Self.setBlocking(made) }
            close(made)
            return answer.proceed(note: "from the pod")  // sendto, sendmsg: the kernel sends on the new socket
        }
        let error = Self.connect(made, to: address)
        // Tracked for the log and for resets after the answer where it can be: the program need not wait.
        let track = { [connections] in
            if (error == 0 || error == EINPROGRESS) && socket.facts.transport == .tcp,
                let destination = call.socketAddress
            {
                connections?.track(
                    made, destination: destination.description, pid: notification.pid, number: socket.number)
            }
        }
        if socket.nonBlocking || error != EINPROGRESS {
            if !socket.nonBlocking { Self.setBlocking(made) }
            if error == 0 { answer.succeed(0) } else { answer.fail(error) }
            track()
            close(made)
            return
        }
        track()
        // A blocking connect: its result is the handshake's, whenever it ends.
        if Self.waitUntilConnected(made, milliseconds: 0) {
            return Self.finishBlockingConnect(made, to: address, answer)
        }
        DispatchQueue.global().async {
            _ = Self.waitUntilConnected(made, milliseconds: -1)
            Self.finishBlockingConnect(made, to: address, answer)
        }
    }

    /// A TCP connect through the agent's stream: once the pod's end is connected, the program's socket is
    /// replaced by the stream's and the connect succeeds (at once, also for a non-blocking socket: Go and
    /// others take an immediate success). Its peer, as getpeername tells, is the port-forward's local end.
    private func serveStream(
        _ notification: Notification, socket: ProgramSocket, destination: [UInt8], streams: StreamConnector,
        answer: Answer
    ) {
        let stream: Int32
        do {
            stream = try streams.open(destination)
        } catch {
            return answer.fail(error.rawValue)
        }
        defer { close(stream) }
        SocketOptions.copy(from: socket.fd, to: stream, family: AF_INET, type: socket.type)
        // The link's socket is non-blocking; the program's mode is what the program gets.
        let mode = fcntl(stream, F_GETFL) & ~O_NONBLOCK
        _ = fcntl(stream, F_SETFL, socket.nonBlocking ? mode | O_NONBLOCK : mode)
        guard putInPlace(stream, of: socket, notification, answer, what: "the stream") else { return }
        answer.succeed(0, note: "through \(streams.address)")
    }

    /// Puts `replacement` at the program's socket's number, keeping its close-on-exec flag. False when the
    /// call went away or the swap failed: the call has its answer then, and `replacement` is the caller's.
    private func putInPlace(
        _ replacement: Int32, of socket: ProgramSocket, _ notification: Notification, _ answer: Answer, what: String
    ) -> Bool {
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

    /// connect(2); 0 or the errno.
    static func connect(_ fd: Int32, to address: [UInt8]) -> Int32 {
        let result = address.withUnsafeBytes {
            Glibc.connect(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t($0.count))
        }
        return result == 0 ? 0 : errno
    }

    static func waitUntilConnected(_ fd: Int32, milliseconds: Int32) -> Bool {
        var entry = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        while true {
            let ready = poll(&entry, 1, milliseconds)
            if ready < 0 && errno == EINTR { continue }
            return ready > 0
        }
    }

    /// Once the handshake is over: its result, and (by connecting again, which then returns 0) the socket
    /// marked connected, as a blocking connect leaves it, so that a later connect gets EISCONN.
    static func finishBlockingConnect(_ fd: Int32, to address: [UInt8], _ answer: Answer) {
        var error: Int32 = 0
        var size = socklen_t(4)
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &size)
        if error == 0 { _ = connect(fd, to: address) }
        setBlocking(fd)
        close(fd)
        if error == 0 { answer.succeed(0) } else { answer.fail(error) }
    }

    static func setBlocking(_ fd: Int32) {
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
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
/// agent: the pool refills on a worker after each take.
final class SocketPool: Sendable {
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
    private let ready = Mutex<[Kind: [Int32]]>([:])

    init(channel: SocketChannel) {
        self.channel = channel
        for kind in Self.common { refill(kind) }
    }

    deinit {
        ready.withLock { ready in for fd in ready.values.joined() { close(fd) } }
    }

    /// A ready socket of `kind`, if there is one.
    func take(_ kind: Kind) -> Int32? {
        let taken = ready.withLock { $0[kind]?.popLast() }
        refill(kind)
        return taken
    }

    /// Closes every ready socket.
    func drain() {
        let sockets = ready.withLock { ready in
            defer { ready = [:] }
            return ready.values.joined()
        }
        for fd in sockets { close(fd) }
    }

    /// A new socket of `kind`, made now (a round trip to the agent).
    func make(_ kind: Kind) throws(Errno) -> Int32 {
        try channel.makeSocket(family: kind.family, type: kind.type, protocol: kind.protocol)
    }

    private func refill(_ kind: Kind) {
        DispatchQueue.global().async { [self] in
            while ready.withLock({ ($0[kind]?.count ?? 0) < Self.depth }) {
                guard let made = try? make(kind) else { return }
                ready.withLock { $0[kind, default: []].append(made) }
            }
        }
    }
}
