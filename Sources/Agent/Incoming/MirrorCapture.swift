import AgentProtocol
import CSysmirror
import Incoming
import LinuxSystem
import Logging
import NIOCore
import Synchronization
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// The copy of a session's mirrored ports: the kernel hands every packet to those ports to the session's
/// NFLOG group (the packet itself goes on to the pod's application untouched); a thread of its own puts
/// each connection's client bytes back in order and sends them to the client over a link connection of its
/// own.
final class MirrorCapture: Sendable {
    let group: UInt16
    let socket: Int32
    private let stopping = Atomic<Bool>(false)
    private let finished = Latch()

    private init(group: UInt16, socket: Int32) {
        self.group = group
        self.socket = socket
    }

    /// Binds a free NFLOG group and starts the thread.
    static func open(session: IncomingSession) throws -> MirrorCapture {
        var result: Int32 = -EBUSY
        var group: UInt16 = 0
        for _ in 0..<16 where result == -EBUSY {
            group = UInt16.random(in: 10_000...60_000)
            result = sysm_nflog_open(group, 16 << 20)
        }
        guard result >= 0 else {
            throw IncomingError("cannot copy the pod's packets (NFLOG group \(group)): \(Errno(rawValue: -result))")
        }
        let capture = MirrorCapture(group: group, socket: result)
        let copier = Copier(session: session)
        _ = try ThreadHandle.start(name: "sysmirror-mirror") { capture.run(copier) }
        return capture
    }

    /// Stops the thread (within 100 ms) and closes the socket.
    func stop() {
        stopping.store(true, ordering: .relaxed)
        finished.wait()
        close(socket)
    }

    private func run(_ copier: Copier) {
        defer { finished.signal() }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var lastExpiry = Clock.monotonic()
        while !stopping.load(ordering: .relaxed) {
            var entry = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
            let ready = poll(&entry, 1, 100)
            let now = Clock.monotonic()
            if now - lastExpiry > 60_000_000_000 {
                copier.expire(before: now - 600_000_000_000)
                lastExpiry = now
            }
            guard ready > 0 else { continue }
            let count = recv(socket, &buffer, buffer.count, Int32(MSG_DONTWAIT))
            if count < 0 {
                if errno == ENOBUFS { copier.lost() }
                continue
            }
            for packet in NetlinkLog.packets(in: buffer[..<count]) {
                if let segment = TCPSegment.parse(ipPacket: packet) { copier.receive(segment, now: now) }
            }
            copier.sendPending()
        }
        copier.endAll()
    }
}

/// Follows the mirrored connections (on the capture's thread) and feeds each one's copy: the bytes a read
/// of the socket brought (up to 64 packets) go out in one write per connection, since each write is a
/// hand-off to the event loop's thread.
private final class Copier: @unchecked Sendable {  // used by the capture's thread only
    let session: IncomingSession
    var flows = MirrorFlows()
    var copies: [MirrorFlows.Key: MirroredConnection] = [:]
    var pending: [MirrorFlows.Key: [UInt8]] = [:]

    init(session: IncomingSession) { self.session = session }

    func receive(_ segment: TCPSegment, now: UInt64) {
        handle(flows.receive(segment, now: now))
    }

    func lost() {
        session.logger.warning("the kernel dropped copies of mirrored packets: the copies of open connections end here")
        handle(flows.loseAll())
    }

    func expire(before: UInt64) { handle(flows.expire(before: before)) }

    func endAll() {
        for copy in copies.values { copy.cut() }
        copies = [:]
    }

    func sendPending() {
        for (key, bytes) in pending { copies[key]?.send(bytes) }
        pending = [:]
    }

    private func sendPending(_ key: MirrorFlows.Key) {
        if let bytes = pending.removeValue(forKey: key) { copies[key]?.send(bytes) }
    }

    func handle(_ events: [MirrorFlows.Event]) {
        for event in events {
            switch event {
            case .opened(let key):
                guard let subscription = session.subscription(for: key.server.port),
                    subscription.mode == .mirror
                else { continue }
                let copy = MirroredConnection(client: key.client, port: key.server.port, logger: session.logger)
                copies[key] = copy
                session.offer(
                    subscription.request, mode: .mirror, client: key.client, on: session.loop,
                    take: { copy.attach($0) }, abandon: { copy.cut() })
            case .data(let key, let bytes):
                if copies[key] != nil { pending[key, default: []] += bytes }
            case .closed(let key):
                sendPending(key)
                copies.removeValue(forKey: key)?.finish()
            case .lost(let key):
                pending[key] = nil
                copies.removeValue(forKey: key)?.cut()
            }
        }
    }
}

/// The copy of one mirrored connection: its client bytes, held until the client takes the connection,
/// then written to the link connection that took it. What comes back is dropped.
final class MirroredConnection: Sendable {
    struct State {
        var held: [UInt8] = []
        var end: StreamEnd?
        var finished = false
        var cut = false
        var bytes = 0
    }

    /// More than this held before the client takes the connection cuts the copy.
    static let holdLimit = 4 << 20
    let client: Endpoint
    let port: UInt16
    let logger: Logger
    private let state = Mutex(State())

    init(client: Endpoint, port: UInt16, logger: Logger) {
        self.client = client
        self.port = port
        self.logger = logger
    }

    func send(_ bytes: [UInt8]) {
        let end = state.withLock { state -> StreamEnd? in
            state.bytes += bytes.count
            guard state.end == nil else { return state.end }
            state.held += bytes
            if state.held.count > Self.holdLimit { state.cut = true }
            return nil
        }
        end?.write(ByteBuffer(bytes: bytes), flush: true)
    }

    /// The client ended its side: so does the copy.
    func finish() {
        let end = state.withLock { state in
            state.finished = true
            return state.end
        }
        end?.closeOutput()
        logEnd("mirrored")
    }

    /// The copy cannot go on (lost packets, the session ended).
    func cut() {
        let end = state.withLock { state in
            state.cut = true
            return state.end
        }
        end?.close()
    }

    func attach(_ link: any Channel) {
        let end = StreamEnd.install(on: link) { _ in }  // the developer's answers are dropped
        let (held, finished, cut) = state.withLock { state in
            state.end = end
            defer { state.held = [] }
            return (state.held, state.finished, state.cut)
        }
        if cut { return end.close() }
        if !held.isEmpty { end.write(ByteBuffer(bytes: held), flush: true) }
        if finished { end.closeOutput() }
    }

    private func logEnd(_ how: String) {
        let bytes = state.withLock { $0.bytes }
        logger.info("incoming connection from \(client) to port \(port): \(how), \(bytes) bytes copied")
    }
}
