import AgentLink
import AgentProtocol
import CSysmirror
import LinuxSystem
import Logging
import Routing
import Synchronization
import SyscallDecoding

#if canImport(Glibc)
    import Glibc
#endif

/// Incoming traffic: when the program listens on a TCP port, the agent takes the same (or the mapped) port
/// in the pod. Each stolen connection comes here over a link connection of its own, and a relay connects it
/// to the program's listening socket from a loopback port; each mirrored one's copy comes on the listen
/// stream, and the mirror feed writes it to such a connection. The program's accept reports the pod's
/// client instead of that port (the address is written into the program's buffer). The program's bind
/// stays local.
final class RemoteIncoming: Sendable {
    /// A listening socket of the program whose port the pod's traffic reaches.
    struct Listening: Sendable {
        let podPort: UInt16
        let mode: IncomingRules.Mode
        /// Where the relay connects: the listening address, loopback for a wildcard one.
        let address: [UInt8]
        let family: Int32
    }

    let client: AgentClient
    let streams: StreamConnector
    let rules: IncomingRules
    let listener: NotificationListener
    let log: TraceLog
    let logger: Logger
    /// By the listening socket's inode.
    private let listening = Mutex<[UInt64: Listening]>([:])
    /// The pod's client of each relay, by the relay's loopback port.
    private let clients = Mutex<[UInt16: (client: [UInt8], mode: IncomingRules.Mode)]>([:])
    private let wallClock = Clock.WallFromMonotonic()
    /// Connections being relayed or fed, so that the end of the session waits for their log lines.
    private let relaying = Atomic<Int>(0)
    /// Started with the first mirrored port.
    private let feed = Mutex<MirrorFeed?>(nil)
    /// ERESTARTSYS: the kernel restarts the call after a signal handler with SA_RESTART, else fails it with
    /// EINTR, as for a blocking accept it interrupts.
    static let restartSystemCall: Int32 = 512

    init(
        client: AgentClient, streams: StreamConnector, rules: IncomingRules, listener: NotificationListener,
        log: TraceLog, logger: Logger
    ) {
        self.client = client
        self.streams = streams
        self.rules = rules
        self.listener = listener
        self.log = log
        self.logger = logger
    }

    // MARK: listen

    /// Serves listen on an IPv4 or IPv6 TCP socket: the listen itself, here, then the subscription in the pod,
    /// so that when the program's listen returns, the pod's port is its too. False for any other socket
    /// (the call then runs as usual).
    func serveListen(_ notification: Notification, done: @escaping RemoteFiles.Completion) -> Bool {
        let number = Int32(truncatingIfNeeded: notification.arguments[0])
        guard let socket = ProgramDescriptor.duplicate(pid: notification.pid, number: number) else { return false }
        guard ProgramDescriptor.socketOption(socket, SO_TYPE) == Int32(SOCK_STREAM.rawValue),
            [AF_INET, AF_INET6].contains(ProgramDescriptor.socketOption(socket, SO_DOMAIN)), listener.isPending(notification.id)
        else {
            close(socket)
            return false
        }
        let answer = Answer(notification: notification, listener: listener, done: done)
        guard Glibc.listen(socket, Int32(truncatingIfNeeded: notification.arguments[1])) == 0 else {
            let error = errno
            close(socket)
            answer.fail(error)
            return true
        }
        defer { close(socket) }
        guard let (address, family, port) = Self.localAddress(socket), let podPort = rules.podPort(forLocal: port)
        else {
            answer.succeed(0)
            return true
        }
        let inode = Self.inode(socket)
        if listening.withLock({ $0[inode] != nil }) {
            answer.succeed(0)  // listening already: a second listen only changes the backlog
            return true
        }
        let entry = Listening(
            podPort: podPort, mode: rules.mode, address: Self.connectable(address, family: family), family: family)
        subscribe(entry, inode: inode, answer: answer)
        return true
    }

    private func subscribe(_ entry: Listening, inode: UInt64, answer: Answer) {
        let subscription = IncomingSubscription(
            port: entry.podPort, mode: entry.mode == .steal ? .steal : .mirror,
            headerPattern: entry.mode == .steal ? rules.headerPattern : "",
            pathPattern: entry.mode == .steal ? rules.pathPattern : "")
        let answered = Atomic<Bool>(false)
        let request = Atomic<UInt32>(0)
        let how = entry.mode == .steal ? "stolen" : "mirrored"
        client.send(.listen(subscription), prepare: { request.store($0, ordering: .relaxed) }) { [self] reply in
            let first = !answered.exchange(true, ordering: .relaxed)
            switch reply {
            case .response(.done):
                listening.withLock { $0[inode] = entry }
                startPinging()
                answer.succeed(0, note: "port \(entry.podPort) of the pod: \(how)")
                return .waitingOnClient
            case .response(.mirror(let events)):
                mirror(events, to: entry, inode: inode, request: request.load(ordering: .relaxed))
                return .waitingOnClient
            case .response(.incoming(let connection)):
                let relay: @Sendable () -> Void = { [self] in
                    deliver(connection, to: entry, inode: inode, request: request.load(ordering: .relaxed))
                }
                if (try? ThreadHandle.start(name: "sysmirror-in", relay)) == nil { relay() }
                return .waitingOnClient
            case .response(.failure(_, let message)):
                if first {
                    logger.warning("port \(entry.podPort) of the pod stays the pod's: \(message)")
                    answer.succeed(0, note: "port \(entry.podPort) of the pod not taken: \(message)")
                }
                return .complete
            case .linkFailure(let reason):
                if first { answer.succeed(0, note: "port \(entry.podPort) of the pod not taken: \(reason)") }
                feed.withLock { $0 }?.post([.linkLost])
                return .complete
            case .response, .chunk, .end:
                if first { answer.succeed(0, note: "port \(entry.podPort) of the pod not taken: unexpected answer") }
                return .complete
            }
        }
    }

    private let pinging = Atomic<Bool>(false)
    static let pingInterval: UInt32 = 5

    /// Once a port is taken: a `ping` every 5 s, so that the agent can tell a live session from a link
    /// that died without a close, and give the ports back after 15 s of silence.
    private func startPinging() {
        guard !pinging.exchange(true, ordering: .relaxed) else { return }
        _ = try? ThreadHandle.start(name: "sysmirror-ping") { [client] in
            while client.isActive {
                sleep(Self.pingInterval)
                client.send(.ping) { _ in .complete }
            }
        }
    }

    // MARK: Connections

    /// Connects to the program's listening socket, takes the pod's connection and relays the two (on a
    /// thread of its own). A program that no longer listens gives the pod's port back, and the connection
    /// with it: the agent hands connections nobody takes to the pod's application.
    private func deliver(_ connection: IncomingConnection, to entry: Listening, inode: UInt64, request: UInt32) {
        guard let (local, port) = localEnd(for: connection.client, family: entry.family, mode: .steal) else { return }
        defer {
            close(local)
            _ = clients.withLock { $0.removeValue(forKey: port) }
        }
        guard RemoteSockets.connect(local, to: entry.address) == 0 else {
            return giveBack(inode: inode, request: request, podPort: entry.podPort)
        }
        let pod: Int32
        do {
            pod = try streams.take(incoming: connection.id)
        } catch {
            return logger.warning("could not take an incoming connection from \(Self.describe(connection.client)): \(error)")
        }
        defer { close(pod) }
        relaying.add(1, ordering: .relaxed)
        defer { relaying.subtract(1, ordering: .relaxed) }
        var one: Int32 = 1  // `local` has it from localEnd
        setsockopt(pod, Int32(IPPROTO_TCP), TCP_NODELAY, &one, 4)
        let (received, sent) = Self.relay(pod, local)
        logEnd(of: connection.client, podPort: entry.podPort, "stolen, \(received) bytes in, \(sent) out")
    }

    /// Hands the copies' events to the feed, with a local end started for each new connection.
    private func mirror(_ events: [MirrorEvent], to entry: Listening, inode: UInt64, request: UInt32) {
        let feed = feed.withLock { feed in
            if feed == nil { feed = try? MirrorFeed() }
            return feed
        }
        guard let feed else { return logger.warning("cannot start the mirror's thread: copies are dropped") }
        feed.post(
            events.compactMap { event in
                switch event {
                case .opened(let id, let client): copy(id, from: client, to: entry, inode: inode, request: request)
                case .bytes(let id, let bytes): .bytes(id, bytes)
                case .ended(let id, let complete): .ended(id, complete: complete)
                }
            })
    }

    /// The local end of mirrored connection `id`, connecting to the program; nil when the program no longer
    /// listens (the pod's port is given back) or no socket could be made.
    private func copy(_ id: UInt64, from client: [UInt8], to entry: Listening, inode: UInt64, request: UInt32)
        -> MirrorFeed.Event?
    {
        guard let (local, port) = localEnd(for: client, family: entry.family, mode: .mirror) else { return nil }
        _ = fcntl(local, F_SETFL, fcntl(local, F_GETFL) | O_NONBLOCK)
        let connected = RemoteSockets.connect(local, to: entry.address)
        guard connected == 0 || connected == EINPROGRESS else {
            close(local)
            _ = clients.withLock { $0.removeValue(forKey: port) }
            giveBack(inode: inode, request: request, podPort: entry.podPort)
            return nil
        }
        relaying.add(1, ordering: .relaxed)
        return .opened(id, fd: local, connecting: connected == EINPROGRESS) { [self] outcome in
            _ = clients.withLock { $0.removeValue(forKey: port) }
            switch outcome {
            case .refused:
                giveBack(inode: inode, request: request, podPort: entry.podPort)
            case .ended(let received, let answered, let whole):
                logEnd(
                    of: client, podPort: entry.podPort,
                    "mirrored\(whole ? "" : " (cut short)"), \(received) bytes in, \(answered) out (dropped)")
            }
            relaying.subtract(1, ordering: .relaxed)
        }
    }

    /// A socket bound to a loopback port, with the pod's client filed under that port, so that the program's
    /// accept reports it (bound before connecting: the program may accept at once).
    private func localEnd(for client: [UInt8], family: Int32, mode: IncomingRules.Mode)
        -> (fd: Int32, port: UInt16)?
    {
        let local = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard local >= 0 else { return nil }
        var loopback = Self.loopback(family: family)
        guard Self.bind(local, &loopback), let (_, _, port) = Self.localAddress(local) else {
            close(local)
            return nil
        }
        var one: Int32 = 1
        setsockopt(local, Int32(IPPROTO_TCP), TCP_NODELAY, &one, 4)
        clients.withLock { $0[port] = (client, mode) }
        return (local, port)
    }

    private func logEnd(of client: [UInt8], podPort: UInt16, _ how: String) {
        log.record(
            TraceEvent(
                time: wallClock.wall(at: Clock.monotonic()), pid: getpid(), syscall: "close", arguments: nil,
                route: .remote, outcome: .continued, durationNanos: 0,
                note:
                    "incoming connection from \(Self.describe(client)) to port \(podPort) of the pod ended: \(how)"
            ))
    }

    /// The program closed its listening socket: the pod's port is the pod's again.
    private func giveBack(inode: UInt64, request: UInt32, podPort: UInt16) {
        guard listening.withLock({ $0.removeValue(forKey: inode) }) != nil else { return }
        client.cancel(request)
        logger.notice("the program no longer listens: port \(podPort) of the pod is the pod's again")
    }

    /// Waits (up to `milliseconds`) for the connections still being relayed to end and be logged: the
    /// program's exit closes its side of them.
    func drain(milliseconds: Int) {
        let deadline = Clock.monotonic() + UInt64(milliseconds) * 1_000_000
        while relaying.load(ordering: .relaxed) > 0 && Clock.monotonic() < deadline { usleep(1000) }
    }

    /// Copies both ways until both directions have ended; the bytes each way.
    static func relay(_ a: Int32, _ b: Int32) -> (fromA: Int, fromB: Int) {
        var open = [true, true]  // a→b, b→a
        var counts = [0, 0]
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        let ends = [(a, b), (b, a)]
        while open[0] || open[1] {
            var fds = [pollfd(fd: open[0] ? a : -1, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: open[1] ? b : -1, events: Int16(POLLIN), revents: 0)]
            guard poll(&fds, 2, -1) > 0 || errno == EINTR else { break }
            for direction in 0..<2 where open[direction] && fds[direction].revents != 0 {
                let (source, target) = ends[direction]
                let count = read(source, &buffer, buffer.count)
                if count > 0, writeAll(target, buffer[..<count]) {
                    counts[direction] += count
                } else if count < 0 && errno == EINTR {
                    continue
                } else if count == 0 {
                    open[direction] = false
                    shutdown(target, Int32(SHUT_WR))
                } else {
                    return (counts[0], counts[1])  // a reset: closing both passes it on
                }
            }
        }
        return (counts[0], counts[1])
    }

    static func writeAll(_ fd: Int32, _ bytes: ArraySlice<UInt8>) -> Bool {
        var offset = bytes.startIndex
        while offset < bytes.endIndex {
            let written = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if written < 0 && errno == EINTR { continue }
            guard written > 0 else { return false }
            offset += written
        }
        return true
    }

    // MARK: accept

    /// Serves accept and accept4 on a listening socket whose port the pod's traffic reaches: sysmirror
    /// accepts, and the program gets the connection and the pod client's address. False for any other
    /// socket.
    func serveAccept(_ notification: Notification, call: DecodedSyscall?, done: @escaping RemoteFiles.Completion)
        -> Bool
    {
        guard listening.withLock({ !$0.isEmpty }) else { return false }
        let number = Int32(truncatingIfNeeded: notification.arguments[0])
        guard let socket = ProgramDescriptor.duplicate(pid: notification.pid, number: number) else { return false }
        guard let entry = listening.withLock({ $0[Self.inode(socket)] }) else {
            close(socket)
            return false
        }
        let flags = call?.spec.name == "accept4" ? Int32(truncatingIfNeeded: notification.arguments[3]) : 0
        let answer = Answer(notification: notification, listener: listener, done: done)
        let nonBlocking = fcntl(socket, F_GETFL) & O_NONBLOCK != 0
        if nonBlocking || Self.isReadable(socket, milliseconds: 0) {
            accept(socket, entry, flags: flags, notification, answer)
            close(socket)
            return true
        }
        // A blocking accept: wait on a thread of its own, and let signals through as the kernel would.
        let wait: @Sendable () -> Void = { [self] in
            defer { close(socket) }
            while !Self.isReadable(socket, milliseconds: 50) {
                guard listener.isPending(notification.id) else { return answer.gone() }
                if Self.hasSignalPending(thread: notification.pid) {
                    return answer.fail(Self.restartSystemCall, note: "a signal arrived")
                }
            }
            accept(socket, entry, flags: flags, notification, answer)
        }
        if (try? ThreadHandle.start(name: "sysmirror-accept", wait)) == nil { wait() }
        return true
    }

    private func accept(_ socket: Int32, _ entry: Listening, flags: Int32, _ notification: Notification, _ answer: Answer) {
        var peer = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let connection = withUnsafeMutablePointer(to: &peer) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sysm_accept4(socket, $0, &length, Int32(SOCK_CLOEXEC.rawValue))
            }
        }
        guard connection >= 0 else { return answer.fail(errno) }
        var address = withUnsafeBytes(of: &peer) { Array($0.prefix(Int(length))) }
        var note: String?
        if let port = Self.loopbackPort(address), let (client, mode) = clients.withLock({ $0[port] }),
            let reported = Self.asFamily(client, entry.family)
        {
            address = reported
            note = "from \(Self.describe(client)) to port \(entry.podPort) of the pod (\(mode == .steal ? "stolen" : "mirrored"))"
        }
        if flags & Int32(SOCK_NONBLOCK.rawValue) != 0 {
            _ = fcntl(connection, F_SETFL, fcntl(connection, F_GETFL) | O_NONBLOCK)
        }
        let memory = ProcessMemory(pid: notification.pid)
        let buffer = notification.arguments[1], lengthAddress = notification.arguments[2]
        if buffer != 0 {
            guard let room = try? memory.readable(at: lengthAddress, count: 4), room.count == 4 else {
                close(connection)
                return answer.fail(EFAULT)
            }
            let capacity = Int(room.withUnsafeBytes { $0.load(as: UInt32.self) })
            let written = memory.write(Array(address.prefix(capacity)), at: buffer)
            let reported = withUnsafeBytes(of: UInt32(address.count)) { Array($0) }
            guard written == 0, memory.write(reported, at: lengthAddress) == 0 else {
                close(connection)
                return answer.fail(EFAULT)
            }
        }
        answer.install(fd: connection, flags: flags & Int32(SOCK_CLOEXEC.rawValue) != 0 ? O_CLOEXEC : 0, note: note)
    }

    // MARK: Sockets

    static func inode(_ fd: Int32) -> UInt64 {
        var status = stat()
        return fstat(fd, &status) == 0 ? UInt64(status.st_ino) : 0
    }

    /// The socket's own address (sockaddr bytes), family and port.
    static func localAddress(_ fd: Int32) -> ([UInt8], Int32, UInt16)? {
        var address = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) == 0 }
        }
        guard ok else { return nil }
        let bytes = withUnsafeBytes(of: &address) { Array($0.prefix(Int(length))) }
        guard bytes.count >= 4 else { return nil }
        return (bytes, Int32(address.ss_family), UInt16(bytes[2]) << 8 | UInt16(bytes[3]))
    }

    static func loopback(family: Int32) -> [UInt8] {
        family == AF_INET6
            ? [10, 0, 0, 0, 0, 0, 0, 0] + [UInt8](repeating: 0, count: 15) + [1, 0, 0, 0, 0]
            : [2, 0, 0, 0, 127, 0, 0, 1] + [UInt8](repeating: 0, count: 8)
    }

    /// The listening address, with a wildcard one (0.0.0.0, ::) made loopback.
    static func connectable(_ address: [UInt8], family: Int32) -> [UInt8] {
        var result = address
        if family == AF_INET, address.count >= 8, address[4..<8].allSatisfy({ $0 == 0 }) {
            result.replaceSubrange(4..<8, with: [127, 0, 0, 1])
        } else if family == AF_INET6, address.count >= 24, address[8..<24].allSatisfy({ $0 == 0 }) {
            result[23] = 1
        }
        return result
    }

    static func bind(_ fd: Int32, _ address: inout [UInt8]) -> Bool {
        address.withUnsafeBytes {
            Glibc.bind(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t($0.count)) == 0
        }
    }

    /// The port of a loopback peer address (127.0.0.0/8, ::1, ::ffff:127.x.x.x).
    static func loopbackPort(_ address: [UInt8]) -> UInt16? {
        guard address.count >= 8 else { return nil }
        let port = UInt16(address[2]) << 8 | UInt16(address[3])
        if address[0] == UInt8(AF_INET), address[4] == 127 { return port }
        guard address[0] == UInt8(AF_INET6), address.count >= 24 else { return nil }
        let ip = address[8..<24]
        if ip.prefix(15).allSatisfy({ $0 == 0 }) && ip.last == 1 { return port }
        if ip.prefix(10).allSatisfy({ $0 == 0 }) && ip[18] == 0xff && ip[19] == 0xff && ip[20] == 127 { return port }
        return nil
    }

    /// A client's sockaddr as a socket of `family` reports it: IPv4 in an IPv6 socket as ::ffff:a.b.c.d;
    /// nil for IPv6 in an IPv4 socket, which cannot say it.
    static func asFamily(_ client: [UInt8], _ family: Int32) -> [UInt8]? {
        guard client.count >= 8 else { return nil }
        if client[0] == UInt8(family) { return client }
        guard family == AF_INET6, client[0] == UInt8(AF_INET) else { return nil }
        return [10, 0, client[2], client[3], 0, 0, 0, 0] + [UInt8](repeating: 0, count: 10) + [0xff, 0xff]
            + Array(client[4..<8]) + [0, 0, 0, 0]
    }

    static func describe(_ address: [UInt8]) -> String {
        SocketAddress(address).map { "\($0)" } ?? "an unknown address"
    }

    static func isReadable(_ fd: Int32, milliseconds: Int32) -> Bool {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, milliseconds) > 0
    }

    /// Whether the thread has a signal pending that it does not block (/proc's SigPnd, ShdPnd, SigBlk).
    static func hasSignalPending(thread: Int32) -> Bool {
        let path = "/proc/\(thread)/status"
        func mask(_ name: String) -> UInt64 {
            ProcessTree.field(name, in: path).flatMap { UInt64($0, radix: 16) } ?? 0
        }
        return (mask("SigPnd") | mask("ShdPnd")) & ~mask("SigBlk") != 0
    }
}
