import AgentLink
import AgentProtocol
import CSysmirror
import LinuxSystem
import Logging
import Routing
import Synchronization
import SyscallDecoding
import UserNotification

#if canImport(Glibc)
    import Glibc
#endif

/// Incoming traffic: when the program listens on a TCP port, the agent takes the same (or the mapped) port
/// in the pod. Each stolen connection comes here over a link connection of its own, and a relay connects it
/// to the program's listening socket from a loopback port; each mirrored one's copy comes on the listen
/// stream, and the mirror feed writes it to such a connection. The program's accept reports the pod's
/// client instead of that port (the address is written into the program's buffer). The program's bind
/// stays local.
///
/// With a unix-socket agent, a port stolen whole goes further: sysmirror takes the pod's listening socket
/// over (the socket channel's `stolenListener`) and accepts the pod's connections itself; the program's
/// accept then gets the pod's own socket in place of the loopback connection, and its bytes pass no relay.
package final class RemoteIncoming: Sendable {
    /// A listening socket of the program whose port the pod's traffic reaches.
    struct Listening: Sendable {
        let podPort: UInt16
        let mode: IncomingRules.Mode
        /// Where the relay connects: the listening address, loopback for a wildcard one.
        let address: SocketAddress
        var family: Int32 { address.family }
    }

    let client: AgentClient
    /// A unix-socket agent's socket channel, which hands stolen ports' listening sockets over.
    let sockets: SocketChannel?
    /// Where the ends of the pod's sockets the program holds itself are logged.
    let connections: ConnectionEvents?
    let rules: IncomingRules
    let listener: NotificationListener
    /// Where the connections' ends are logged (the trace log's `record`).
    let log: RecordEvent
    let logger: Logger
    /// By the listening socket's inode.
    private let listening = Mutex<[UInt64: Listening]>([:])
    /// A loopback connection to the program's listening socket, made for one of the pod's connections.
    enum Arrival {
        /// Announced by the agent, relayed or copied: the program's accept reports the pod's client.
        case announced(client: SocketAddress, mode: IncomingRules.Mode)
        /// Queued on the pod's listening socket, taken over: the program's accept takes it from there (and
        /// gets the pod's own socket in place of this connection, whose end `local` is held until then).
        case queued(PodListener, local: SharedDescriptor)
    }

    /// By the loopback connection's local port.
    private let arrivals = Mutex<[UInt16: Arrival]>([:])
    private let wallClock = Clock.WallFromMonotonic()
    /// Connections being relayed or fed, so that the end of the session waits for their log lines.
    private let relaying: ActivityCount
    /// Relays, copies, accept waits and pings live here.
    private let loop: EventLoop
    private let feed: MirrorFeed
    /// The pod's listening sockets taken over, by the program's listening socket's inode.
    private let podListeners = Mutex<[UInt64: PodListener]>([:])
    /// Held around each accept sysmirror makes on a program's listening socket, with a readiness check
    /// first: an accept from the loop and one from the receiving thread never both wait for one connection.
    private let acceptLock = Mutex<Void>(())
    /// ERESTARTSYS: the kernel restarts the call after a signal handler with SA_RESTART, else fails it with
    /// EINTR, as for a blocking accept it interrupts.
    static let restartSystemCall: Int32 = 512

    package init(
        client: AgentClient, sockets: SocketChannel?, connections: ConnectionEvents?,
        rules: IncomingRules, listener: NotificationListener, log: @escaping RecordEvent, loop: EventLoop,
        logger: Logger
    ) throws(SystemCallError) {
        self.sockets = sockets
        self.connections = connections
        self.loop = loop
        feed = MirrorFeed(loop: loop)
        relaying = try ActivityCount()
        self.client = client
        self.rules = rules
        self.listener = listener
        self.log = log
        self.logger = logger
        // The agent gave the ports back when the old connection closed: they are taken again.
        client.whenLinkIsBack { [self] in
            for (inode, entry) in listening.withLock({ $0 }) { subscribe(entry, inode: inode, answer: nil) }
        }
    }

    // MARK: listen

    /// Serves listen on an IPv4 or IPv6 TCP socket: the listen itself, here, then the subscription in the pod,
    /// so that when the program's listen returns, the pod's port is its too. False for any other socket
    /// (the call then runs as usual).
    package func serveListen(_ notification: Notification, done: @escaping PendingCall.Completion) -> Bool {
        let number = Int32(truncatingIfNeeded: notification.arguments[0])
        guard let socket = ProgramDescriptor.duplicate(pid: notification.pid, number: number) else { return false }
        guard (try? Sockets.option(socket.raw, SO_TYPE)) == Int32(SOCK_STREAM.rawValue),
            let domain = try? Sockets.option(socket.raw, SO_DOMAIN), [AF_INET, AF_INET6].contains(domain),
            listener.isPending(notification.id)
        else { return false }
        let answer = PendingCall(notification: notification, listener: listener, logger: logger, done: done)
        do throws(SystemCallError) {
            try Sockets.listen(socket.raw, backlog: Int32(truncatingIfNeeded: notification.arguments[1]))
        } catch {
            answer.fail(error.errno.rawValue)
            return true
        }
        guard let address = try? Sockets.localAddress(socket.raw), let port = address.port,
            let podPort = rules.podPort(forLocal: port)
        else {
            answer.succeed(0)
            return true
        }
        let inode = Self.inode(socket.raw)
        if listening.withLock({ $0[inode] != nil }) {
            answer.succeed(0)  // listening already: a second listen only changes the backlog
            return true
        }
        subscribe(
            Listening(podPort: podPort, mode: rules.mode, address: address.connectable), inode: inode, answer: answer)
        return true
    }

    /// Takes the pod's port for `entry`; `answer` is the program's listen, nil when the port is taken again
    /// after the link came back.
    private func subscribe(_ entry: Listening, inode: UInt64, answer: PendingCall?) {
        let subscription = IncomingSubscription(
            port: entry.podPort, mode: entry.mode == .steal ? .steal : .mirror,
            headerPattern: entry.mode == .steal ? rules.headerPattern : "",
            pathPattern: entry.mode == .steal ? rules.pathPattern : "", family: entry.family,
            developer: Self.developer)
        let answered = Atomic<Bool>(false)
        let request = Atomic<UInt32>(0)
        let how = entry.mode == .steal ? "stolen" : "mirrored"
        client.send(.listen(subscription), prepare: { request.store($0, ordering: .relaxed) }) { [self] reply in
            let first = !answered.exchange(true, ordering: .relaxed)
            switch reply {
            case .response(.done):
                listening.withLock { $0[inode] = entry }
                startPinging()
                if entry.mode == .steal, !subscription.filtersHTTP, let sockets {
                    loop.execute { [self] in
                        takeOver(entry, inode: inode, request: request.load(ordering: .relaxed), from: sockets)
                    }
                }
                if let answer {
                    answer.succeed(0, note: "port \(entry.podPort) of the pod: \(how)")
                } else {
                    logger.notice("port \(entry.podPort) of the pod is \(how) again")
                }
                return .waitingOnClient
            case .response(.notice(let note)):
                logger.notice("port \(entry.podPort) of the pod: \(note)")
                return .waitingOnClient
            case .response(.mirror(let events)):
                mirror(events, to: entry, inode: inode, request: request.load(ordering: .relaxed))
                return .waitingOnClient
            case .response(.incoming(let connection)):
                let request = request.load(ordering: .relaxed)
                loop.execute { [self] in deliver(connection, to: entry, inode: inode, request: request) }
                return .waitingOnClient
            case .response(.failure(_, let message)):
                if first {
                    logger.warning("port \(entry.podPort) of the pod stays the pod's: \(message)")
                    answer?.succeed(0, note: "port \(entry.podPort) of the pod not taken: \(message)")
                }
                return .complete
            case .linkFailure(let reason):
                if first { answer?.succeed(0, note: "port \(entry.podPort) of the pod not taken: \(reason)") }
                feed.post([.linkLost])
                loop.execute { [self] in releasePodListener(of: inode) }
                return .complete
            case .response, .chunk, .end:
                if first { answer?.succeed(0, note: "port \(entry.podPort) of the pod not taken: unexpected answer") }
                return .complete
            }
        }
    }

    private let pinging = Atomic<Bool>(false)
    static let pingInterval: UInt64 = 5_000_000_000
    /// Who steals, as the pod's other sessions hear of it.
    static let developer = UserIdentity.describe()

    /// Once a port is taken: a `ping` every 5 s, so that the agent can tell a live session from a link
    /// that died without a close, and give the ports back after 15 s of silence.
    private func startPinging() {
        guard !pinging.exchange(true, ordering: .relaxed) else { return }
        loop.execute { [self] in ping() }
    }

    private func ping() {
        guard client.isActive else { return }
        client.send(.ping) { _ in .complete }
        loop.schedule(in: Self.pingInterval) { [self] in ping() }
    }

    // MARK: Connections

    /// On the loop: connects to the program's listening socket, takes the pod's connection and relays the
    /// two. A program that no longer listens gives the pod's port back, and the connection with it: the
    /// agent hands connections nobody takes to the pod's application.
    private func deliver(_ connection: IncomingConnection, to entry: Listening, inode: UInt64, request: UInt32) {
        guard let client = SocketAddress(connection.client),
            let (local, port) = localEnd(family: entry.family, { _ in .announced(client: client, mode: .steal) })
        else { return }
        relaying.begin()
        // Connected first: a refusal means the program no longer listens, and the agent then gives the
        // connection, which nobody takes, to the pod's application.
        whenConnected(local, to: entry.address) { [self] connected in
            guard connected else {
                forget(port)
                giveBack(inode: inode, request: request, podPort: entry.podPort)
                return relaying.end()
            }
            LinkStream.take(incoming: connection.id, through: self.client, on: loop) { [self] result in
                switch result {
                case .success(let pod):
                    pod.relay(with: local) { [self] outcome in
                        forget(port)
                        let end = outcome.cut.map {
                            "cut after \(outcome.fromPod) bytes in, \(outcome.fromSocket) out: \($0)"
                        }
                        logEnd(
                            of: client, podPort: entry.podPort,
                            end ?? "stolen, \(outcome.fromPod) bytes in, \(outcome.fromSocket) out")
                        relaying.end()
                    }
                case .failure(let error):
                    forget(port)
                    logger.warning("could not take an incoming connection from \(Self.describe(client)): \(error)")
                    relaying.end()
                }
            }
        }
    }

    /// On the loop: relays the pod's connection (from the socket channel) and the loopback one to the program
    /// until both end.
    private func relay(
        _ pod: SharedDescriptor, _ local: SharedDescriptor, from client: SocketAddress?, to entry: Listening
    ) {
        Relay.start(on: loop, local, pod) { [self] sent, received in
            logEnd(of: client, podPort: entry.podPort, "stolen, \(received) bytes in, \(sent) out")
            relaying.end()
        }
    }

    // MARK: The pod's listening socket, taken over

    /// On the loop: asks the agent for the listening socket of the stolen port and, from then on, wakes the
    /// program for each connection queued there. Without it (an older agent, a port given back meanwhile),
    /// connections keep coming announced.
    private func takeOver(_ entry: Listening, inode: UInt64, request: UInt32, from sockets: SocketChannel) {
        sockets.stolenListener(port: entry.podPort, family: entry.family) { [self] result in
            guard case .success(let socket) = result, listening.withLock({ $0[inode] != nil }) else { return }
            do {
                try socket.descriptor.setNonBlocking(true)
                let podListener = try PodListener.start(socket, on: loop) { [self] in
                    wake(for: $0, entry, inode: inode, request: request)
                }
                podListeners.withLock { $0[inode] = podListener }
            } catch {
                logger.warning("could not take over the listening socket of port \(entry.podPort) of the pod: \(error)")
            }
        }
    }

    /// On the loop: a connection is queued on the pod's listening socket. A loopback connection to the
    /// program wakes its accept, which takes the pod's connection (`acceptQueued`); one at a time, so the
    /// listening socket is not watched meanwhile. A program that no longer listens leaves it queued, for
    /// the agent to pass to the pod's application when the port goes back.
    private func wake(for podListener: PodListener, _ entry: Listening, inode: UInt64, request: UInt32) {
        guard let (local, port) = localEnd(family: entry.family, { .queued(podListener, local: $0) }) else {
            return podListener.resume()
        }
        whenConnected(local, to: entry.address) { [self] connected in
            guard connected else {
                forget(port)
                return giveBack(inode: inode, request: request, podPort: entry.podPort)
            }
        }
    }

    /// The program accepted the loopback connection `woken` for a connection queued on the pod's listening
    /// socket: it gets the pod's socket instead (of its own family; else a relay joins the two), with the
    /// pod client's address. A client that left meanwhile leaves the program a connection that ends at once.
    private func acceptQueued(
        _ woken: consuming OwnedDescriptor, _ podListener: PodListener, local: SharedDescriptor, _ entry: Listening,
        flags: Int32, _ answer: PendingCall
    ) {
        defer { podListener.resume() }
        let closeOnExec = flags & Int32(SOCK_CLOEXEC.rawValue) != 0 ? O_CLOEXEC : 0
        var peer: SocketAddress?
        let pod: SharedDescriptor
        do throws(SystemCallError) {
            pod = SharedDescriptor(
                try Sockets.accept(
                    podListener.socket.raw, flags: Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue),
                    peer: &peer))
        } catch {
            answer.install(fd: woken, flags: closeOnExec, note: "the pod's client left before it was accepted")
            return
        }
        // An IPv4 client of a dual-stack listener shows as ::ffff:a.b.c.d; the log wants a.b.c.d.
        let client = peer?.unmapped
        guard report(client?.seen(byFamily: entry.family), to: answer) else { return }
        let note = "from \(Self.describe(client)) to port \(entry.podPort) of the pod (stolen"
        // The peer's address is of the socket's family (an IPv4 client of a dual-stack one comes mapped).
        guard peer?.family == entry.family else {
            relaying.begin()
            loop.execute { [self] in relay(pod, local, from: client, to: entry) }
            answer.install(fd: woken, flags: closeOnExec, note: note + ")")
            return
        }
        woken.close()
        do throws(SystemCallError) {
            try pod.descriptor.setNonBlocking(flags & Int32(SOCK_NONBLOCK.rawValue) != 0)
            guard
                let number = answer.install(
                    fd: try pod.descriptor.duplicate(), flags: closeOnExec, note: note + "; the pod's own socket)")
            else { return }
            connections?.track(
                pod.raw, name: "incoming connection from \(Self.describe(client)) to port \(entry.podPort) of the pod",
                stolen: true, pid: answer.notification.pid, number: number)
        } catch {
            answer.fail(error.errno.rawValue, note: "could not hand the pod's socket over: \(error)")
        }
    }

    /// On the loop: the pod's listening socket of a port given back goes (the agent passes what is still
    /// queued on it to the pod's application).
    private func releasePodListener(of inode: UInt64) {
        podListeners.withLock { $0.removeValue(forKey: inode) }?.stop()
    }

    /// On the loop: connects `fd` (non-blocking) to `address`, and tells whether it connected, once the
    /// handshake is over (at once, when it is over already).
    private func whenConnected(_ fd: SharedDescriptor, to address: SocketAddress, _ body: @escaping (Bool) -> Void) {
        do throws(SystemCallError) {
            try Sockets.connect(fd.raw, to: address)
            return body(true)
        } catch  where error.errno == .nowInProgress {
            // On loopback the handshake is usually over by the time connect returns: no loop turn then.
            if readiness(of: fd.raw, for: Int16(POLLOUT)) != 0 { return body((try? Sockets.pendingError(fd.raw)) == 0) }
        } catch {
            return body(false)
        }
        loop.whenReady(fd.raw, for: .writable) { _ in body((try? Sockets.pendingError(fd.raw)) == 0) }
    }

    private func forget(_ port: UInt16) {
        _ = arrivals.withLock { $0.removeValue(forKey: port) }
    }

    /// Hands the copies' events to the feed, with a local end started for each new connection.
    private func mirror(_ events: [MirrorEvent], to entry: Listening, inode: UInt64, request: UInt32) {
        feed.post(
            events.compactMap { event in
                switch event {
                case .opened(let id, let client):
                    copy(id, from: SocketAddress(client), to: entry, inode: inode, request: request)
                case .bytes(let id, let bytes): .bytes(id, bytes)
                case .ended(let id, let complete): .ended(id, complete: complete)
                }
            })
    }

    /// The local end of mirrored connection `id`, connecting to the program; nil when the program no longer
    /// listens (the pod's port is given back) or no socket could be made.
    private func copy(_ id: UInt64, from client: SocketAddress?, to entry: Listening, inode: UInt64, request: UInt32)
        -> MirrorFeed.Event?
    {
        guard let client,
            let (local, port) = localEnd(family: entry.family, { _ in .announced(client: client, mode: .mirror) })
        else { return nil }
        var connecting = false
        do throws(SystemCallError) {
            try Sockets.connect(local.raw, to: entry.address)
        } catch  where error.errno == .nowInProgress {
            connecting = true
        } catch {
            forget(port)
            giveBack(inode: inode, request: request, podPort: entry.podPort)
            return nil
        }
        relaying.begin()
        return .opened(id, fd: local, connecting: connecting) { [self] outcome in
            forget(port)
            switch outcome {
            case .refused:
                giveBack(inode: inode, request: request, podPort: entry.podPort)
            case .ended(let received, let answered, let whole):
                logEnd(
                    of: client, podPort: entry.podPort,
                    "mirrored\(whole ? "" : " (cut short)"), \(received) bytes in, \(answered) out (dropped)")
            }
            relaying.end()
        }
    }

    /// A non-blocking socket bound to a loopback port, with what the program's accept is to make of its
    /// connection filed under that port (bound before connecting: the program may accept at once).
    private func localEnd(family: Int32, _ arrival: (SharedDescriptor) -> Arrival) -> (
        fd: SharedDescriptor, port: UInt16
    )? {
        do throws(SystemCallError) {
            let local = SharedDescriptor(
                try Sockets.make(family: family, type: Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue)))
            try Sockets.bind(local.raw, to: .loopback(family: family))
            guard let port = try Sockets.localAddress(local.raw).port else { return nil }
            try Sockets.setNoDelay(local.raw)
            arrivals.withLock { $0[port] = arrival(local) }
            return (local, port)
        } catch {
            logger.warning("could not make the local end of one of the pod's connections: \(error)")
            return nil
        }
    }

    private func logEnd(of client: SocketAddress?, podPort: UInt16, _ how: String) {
        log(
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
        loop.execute { [self] in releasePodListener(of: inode) }
        client.cancel(request)
        logger.notice("the program no longer listens: port \(podPort) of the pod is the pod's again")
    }

    /// Waits (up to `milliseconds`) for the connections still being relayed to end and be logged: the
    /// program's exit closes its side of them.
    package func drain(milliseconds: Int) {
        relaying.waitUntilIdle(nanoseconds: UInt64(milliseconds) * 1_000_000)
        connections?.drain(milliseconds: milliseconds)
    }

    // MARK: accept

    /// Serves accept and accept4 on a listening socket whose port the pod's traffic reaches: sysmirror
    /// accepts, and the program gets the connection and the pod client's address. False for any other
    /// socket.
    package func serveAccept(
        _ notification: Notification, call: DecodedSyscall?, done: @escaping PendingCall.Completion
    )
        -> Bool
    {
        guard listening.withLock({ !$0.isEmpty }) else { return false }
        let number = Int32(truncatingIfNeeded: notification.arguments[0])
        guard let duplicate = ProgramDescriptor.duplicate(pid: notification.pid, number: number) else { return false }
        let socket = SharedDescriptor(duplicate)
        guard let entry = listening.withLock({ $0[Self.inode(socket.raw)] }) else { return false }
        let flags = call?.spec.call == .accept4 ? Int32(truncatingIfNeeded: notification.arguments[3]) : 0
        let answer = PendingCall(notification: notification, listener: listener, logger: logger, done: done)
        let nonBlocking = ((try? socket.descriptor.statusFlags()) ?? 0) & O_NONBLOCK != 0
        if nonBlocking {
            accept(socket, entry, flags: flags, answer)  // EAGAIN when nothing is there, as the kernel answers
            return true
        }
        if acceptIfReady(socket, entry, flags: flags, answer) { return true }
        // A blocking accept: wait on the loop, and let signals through as the kernel would.
        loop.execute { [self] in AcceptWait.start(on: loop, socket, incoming: self, entry: entry, flags: flags, answer)
        }
        return true
    }

    /// Accepts when a connection is there; false (and nothing done) when none is.
    func acceptIfReady(_ socket: SharedDescriptor, _ entry: Listening, flags: Int32, _ answer: PendingCall) -> Bool {
        acceptLock.withLock { _ in
            guard Self.isReadable(socket.raw) else { return false }
            accept(socket, entry, flags: flags, answer)
            return true
        }
    }

    private func accept(_ socket: SharedDescriptor, _ entry: Listening, flags: Int32, _ answer: PendingCall) {
        var peer: SocketAddress?
        let connection: OwnedDescriptor
        do throws(SystemCallError) {
            connection = try Sockets.accept(socket.raw, flags: flags & Int32(SOCK_NONBLOCK.rawValue), peer: &peer)
        } catch {
            return answer.fail(error.errno.rawValue)
        }
        let closeOnExec = flags & Int32(SOCK_CLOEXEC.rawValue) != 0 ? O_CLOEXEC : 0
        guard let peer, peer.isLoopback, let port = peer.port, let arrival = arrivals.withLock({ $0[port] }) else {
            guard report(peer, to: answer) else { return }
            answer.install(fd: connection, flags: closeOnExec)
            return
        }
        switch arrival {
        case .queued(let podListener, let local):
            forget(port)
            acceptQueued(connection, podListener, local: local, entry, flags: flags, answer)
        case .announced(let client, let mode):
            guard report(client.seen(byFamily: entry.family) ?? peer, to: answer) else { return }
            answer.install(
                fd: connection, flags: closeOnExec,
                note: "from \(client) to port \(entry.podPort) of the pod (\(mode == .steal ? "stolen" : "mirrored"))")
        }
    }

    /// Writes `address` where accept's caller asked for its peer's (nothing when it passed no buffer); false,
    /// with the call failed, when its memory cannot take it.
    private func report(_ address: SocketAddress?, to answer: PendingCall) -> Bool {
        let bytes = address?.bytes ?? []
        let memory = ProcessMemory(pid: answer.notification.pid)
        let buffer = answer.notification.arguments[1], lengthAddress = answer.notification.arguments[2]
        guard buffer != 0 else { return true }
        guard let room = try? memory.readable(at: lengthAddress, count: 4), room.count == 4 else {
            answer.fail(EFAULT)
            return false
        }
        let capacity = Int(room.withUnsafeBytes { $0.load(as: UInt32.self) })
        let written = memory.write(Array(bytes.prefix(capacity)), at: buffer)
        let length = withUnsafeBytes(of: UInt32(bytes.count)) { Array($0) }
        guard written == 0, memory.write(length, at: lengthAddress) == 0 else {
            answer.fail(EFAULT)
            return false
        }
        return true
    }

    // MARK: Sockets

    /// The socket's inode, which names it whatever descriptor reaches it; 0 for a descriptor gone meanwhile.
    static func inode(_ fd: Int32) -> UInt64 {
        var status = stat()
        return (try? systemCall("fstat") { fstat(fd, &status) }) != nil ? UInt64(status.st_ino) : 0
    }

    static func describe(_ address: SocketAddress?) -> String {
        address.map { "\($0)" } ?? "an unknown address"
    }

    static func isReadable(_ fd: Int32) -> Bool { readiness(of: fd, for: Int16(POLLIN)) != 0 }

    /// Whether the thread has a signal pending that it does not block (/proc's SigPnd, ShdPnd, SigBlk).
    static func hasSignalPending(thread: Int32) -> Bool {
        let path = "/proc/\(thread)/status"
        func mask(_ name: String) -> UInt64 {
            ProcessTree.field(name, in: path).flatMap { UInt64($0, radix: 16) } ?? 0
        }
        return (mask("SigPnd") | mask("ShdPnd")) & ~mask("SigBlk") != 0
    }
}

/// A blocking accept waiting on the serving loop: for the listening socket to have a connection, or, checked
/// every 50 ms, for the call to go away or a signal to come for the caller (answered ERESTARTSYS, so that
/// its handler runs and SA_RESTART restarts the accept as the kernel would).
final class AcceptWait: @unchecked Sendable {  // touched only on `loop`
    private let loop: EventLoop
    private let socket: SharedDescriptor
    private let incoming: RemoteIncoming
    private let entry: RemoteIncoming.Listening
    private let flags: Int32
    private let answer: PendingCall
    private var registration: EventLoop.Registration?
    private var timer: EventLoop.Timer?
    static let checkInterval: UInt64 = 50_000_000

    private init(
        loop: EventLoop, socket: SharedDescriptor, incoming: RemoteIncoming, entry: RemoteIncoming.Listening,
        flags: Int32, answer: PendingCall
    ) {
        self.loop = loop
        self.socket = socket
        self.incoming = incoming
        self.entry = entry
        self.flags = flags
        self.answer = answer
    }

    static func start(
        on loop: EventLoop, _ socket: SharedDescriptor, incoming: RemoteIncoming, entry: RemoteIncoming.Listening,
        flags: Int32, _ answer: PendingCall
    ) {
        let wait = AcceptWait(
            loop: loop, socket: socket, incoming: incoming, entry: entry, flags: flags, answer: answer)
        do {
            wait.registration = try loop.register(socket.raw, for: .readable) { _ in wait.readable() }
        } catch {
            return answer.fail(error.errno.rawValue)
        }
        wait.check()
    }

    private func readable() {
        if incoming.acceptIfReady(socket, entry, flags: flags, answer) { end() }
    }

    private func check() {
        if !answer.listener.isPending(answer.notification.id) {
            answer.gone()
            return end()
        }
        if RemoteIncoming.hasSignalPending(thread: answer.notification.pid) {
            answer.fail(RemoteIncoming.restartSystemCall, note: "a signal arrived")
            return end()
        }
        timer = loop.schedule(in: Self.checkInterval) { [self] in check() }
    }

    private func end() {
        if let registration { loop.deregister(registration) }
        if let timer { loop.cancel(timer) }
        registration = nil
        timer = nil
    }
}

/// A stolen port's listening socket in the pod, taken over from the agent: watched on the serving loop,
/// one-shot, while no loopback connection it caused waits for the program's accept. The program's accept
/// re-arms it from the receiving thread, without a wake-up of the loop.
final class PodListener: Sendable {
    let socket: SharedDescriptor
    private let loop: EventLoop
    /// Nil once stopped: a re-arm must not reach a number deregistered and reused.
    private let registration = Mutex<EventLoop.Registration?>(nil)

    private init(socket: SharedDescriptor, loop: EventLoop) {
        self.socket = socket
        self.loop = loop
    }

    /// On the loop: `handler` runs each time a connection is queued and the listener is armed.
    static func start(_ socket: SharedDescriptor, on loop: EventLoop, _ handler: @escaping (PodListener) -> Void)
        throws(SystemCallError) -> PodListener
    {
        let listener = PodListener(socket: socket, loop: loop)
        let made = try loop.register(socket.raw, for: [.readable, .oneShot]) { [unowned listener] _ in handler(listener)
        }
        listener.registration.withLock { $0 = made }
        return listener
    }

    /// From any thread: watched again.
    func resume() {
        registration.withLock { if let registration = $0 { loop.rearm(registration, for: .readable) } }
    }

    /// On the loop: not watched any more; the socket closes with its last holder.
    func stop() {
        registration.withLock { registration in
            if let registration { loop.deregister(registration) }
            registration = nil
        }
    }
}
