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
/// each connection's client bytes back in order and sends them to the client on the listen stream.
final class MirrorCapture: Sendable {
    let group: UInt16
    /// The NFLOG socket; it closes with the capture, once `stop` has ended the thread.
    let socket: SharedDescriptor
    private let stopping = Atomic<Bool>(false)
    private let finished = Latch()

    private init(group: UInt16, socket: consuming OwnedDescriptor) {
        self.group = group
        self.socket = SharedDescriptor(socket)
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
        let capture = MirrorCapture(group: group, socket: OwnedDescriptor(taking: result))
        let copier = Copier(session: session)
        _ = try ThreadHandle.start(name: "sysmirror-mirror") { capture.run(copier) }
        return capture
    }

    /// Stops the thread (within 100 ms); the socket closes with the capture.
    func stop() {
        stopping.store(true, ordering: .relaxed)
        finished.wait()
    }

    private func run(_ copier: Copier) {
        defer { finished.signal() }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var lastExpiry = Clock.monotonic()
        while !stopping.load(ordering: .relaxed) {
            // Every 100 ms at most, to see `stopping`.
            let ready = readiness(of: socket.raw, for: Int16(POLLIN), milliseconds: 100)
            let now = Clock.monotonic()
            if now - lastExpiry > 60_000_000_000 {
                copier.expire(before: now - 600_000_000_000)
                lastExpiry = now
            }
            guard ready != 0 else { continue }
            let count: Int
            do throws(SystemCallError) {
                count = try Sockets.receive(socket.raw, into: &buffer, flags: Int32(MSG_DONTWAIT))
            } catch {
                if error.errno == .noBufferSpace { copier.lost() }  // the kernel dropped copies: those connections are cut
                continue
            }
            copier.checkBacklog()
            for packet in NetlinkLog.packets(in: buffer[..<count]) {
                if let segment = TCPSegment.parse(ipPacket: packet) { copier.receive(segment, now: now) }
            }
            copier.flush()
        }
        copier.endAll()
    }
}

/// Follows the mirrored connections (on the capture's thread) and sends their copies on the listen stream
/// they were subscribed on, in `mirror` batches: what one read of the socket brought (up to 256 packets)
/// goes to the link in one hand-off to its loop and, mostly, one frame.
private final class Copier: @unchecked Sendable {  // used by the capture's thread only
    struct Copy {
        let id: UInt64
        let request: UInt32
        let port: UInt16
        var bytes = 0
    }

    /// Copies not yet written to the link beyond this cut every open copy, and new connections are not
    /// copied until half of it is written: a client that cannot keep up loses copies, never the agent its
    /// memory.
    static let backlogLimit = 16 << 20
    /// A `mirror` frame holds about this much at most (well inside a frame's limit).
    static let batchLimit = 256 << 10
    let session: IncomingSession
    var flows = MirrorFlows()
    var copies: [MirrorFlows.Key: Copy] = [:]
    /// Client bytes of this batch, by connection: one event each.
    var pending: [MirrorFlows.Key: [UInt8]] = [:]
    /// This batch's events, by listen request, and their size.
    var batch: [UInt32: [MirrorEvent]] = [:]
    var batchSize = 0
    var lastID: UInt64 = 0
    var behind = false

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
        for key in copies.keys { end(key, complete: false) }
        flush()
    }

    func handle(_ events: [MirrorFlows.Event]) {
        for event in events {
            switch event {
            case .opened(let key):
                guard !behind, let subscription = session.subscription(for: key.server.port),
                    subscription.mode == .mirror
                else { continue }
                lastID += 1
                copies[key] = Copy(id: lastID, request: subscription.request, port: key.server.port)
                append(.opened(connection: lastID, client: key.client.socketAddress), to: subscription.request)
            case .data(let key, let bytes):
                guard copies[key] != nil else { continue }
                copies[key]!.bytes += bytes.count
                pending[key, default: []] += bytes
            case .closed(let key):
                end(key, complete: true)
            case .lost(let key):
                end(key, complete: false)
            }
        }
    }

    /// Before each read's packets: a client too far behind has every copy cut, and new connections are not
    /// copied until it has caught up.
    func checkBacklog() {
        let backlog = session.unsentBytes
        if !behind && backlog > Self.backlogLimit {
            behind = true
            session.logger.warning(
                "the developer's side is \(backlog >> 20) MiB behind the pod's mirrored traffic: \(copies.count) copies cut, and new connections are not copied until it catches up"
            )
            for key in copies.keys { end(key, complete: false) }
            send()
        } else if behind && backlog < Self.backlogLimit / 2 {
            behind = false
            session.logger.notice("the developer's side caught up: new connections are copied again")
        }
    }

    /// Sends what the read brought.
    func flush() {
        for (key, bytes) in pending { if let copy = copies[key] { appendBytes(bytes, of: copy) } }
        pending = [:]
        send()
    }

    private func end(_ key: MirrorFlows.Key, complete: Bool) {
        guard let copy = copies.removeValue(forKey: key) else { return }
        if let bytes = pending.removeValue(forKey: key) { appendBytes(bytes, of: copy) }
        append(.ended(connection: copy.id, complete: complete), to: copy.request)
        session.logger.info(
            "incoming connection from \(key.client) to port \(copy.port): mirrored, \(copy.bytes) bytes copied\(complete ? "" : " (cut short)")"
        )
    }

    /// Bytes in events of a batch's size at most.
    private func appendBytes(_ bytes: [UInt8], of copy: Copy) {
        for start in stride(from: 0, to: bytes.count, by: Self.batchLimit) {
            let piece = Array(bytes[start..<min(bytes.count, start + Self.batchLimit)])
            append(.bytes(connection: copy.id, piece), to: copy.request)
        }
    }

    private func append(_ event: MirrorEvent, to request: UInt32) {
        let size =
            switch event {
            case .opened(_, let client): 13 + client.count
            case .bytes(_, let bytes): 13 + bytes.count
            case .ended: 14
            }
        if batchSize + size > Self.batchLimit { send() }
        batch[request, default: []].append(event)
        batchSize += size
    }

    private func send() {
        guard !batch.isEmpty else { return }
        session.send(batch.map { .response(id: $0.key, .mirror($0.value)) }, size: batchSize)
        batch = [:]
        batchSize = 0
    }
}
