import CSysmirror
import LinuxSystem
import Routing
import Synchronization
import SyscallDecoding
import UserNotification

#if canImport(Glibc)
    import Glibc
#endif

/// The end of each TCP connection of the pod's that the program holds itself (one it made from the pod, or
/// a stolen one whose socket it got), with the bytes it carried, for the log.
///
/// The traffic never passes through sysmirror (docs/architecture.md, "Outgoing traffic"), so the counts come
/// from the kernel: a NETLINK_SOCK_DIAG socket of the pod's namespace (made and subscribed by the agent)
/// reports each TCP socket's destruction with its cookie and tcp_info; the ones whose cookie sysmirror put
/// in place are logged.
package final class ConnectionEvents: Sendable {
    struct Connection: Sendable {
        /// "connection to 10.96.0.20:8080", "incoming connection from 10.0.0.7:41234 to port 8080 of the pod".
        let name: String
        /// A stolen connection's log line counts bytes in and out, as a relayed one's does.
        let stolen: Bool
        let pid: Int32
        /// The program's descriptor number for the socket (for a reset).
        let number: Int32
    }

    let socket: SharedDescriptor
    /// Where the connections' ends are logged (the trace log's `record`).
    let log: RecordEvent
    private let tracked = Mutex<[UInt64: Connection]>([:])
    /// The tracked connections, for the end of the session to wait for their ends.
    private let open: ActivityCount
    private let wallClock = Clock.WallFromMonotonic()

    /// Reads `socket`'s events on `loop` from now on.
    package init(socket: SharedDescriptor, log: @escaping RecordEvent, loop: EventLoop) throws(SystemCallError) {
        self.socket = socket
        self.log = log
        open = try ActivityCount()
        try socket.descriptor.setNonBlocking(true)
        loop.execute { [self] in
            // Registered for the session's life: the loop lets it go when it closes.
            _ = try? loop.register(socket.raw, for: .readable) { [self] _ in readEvents() }
        }
    }

    /// SO_COOKIE: a socket's identity in sock_diag.
    static func cookie(of fd: Int32) -> UInt64? {
        try? Sockets.option64(fd, 57)
    }

    func track(_ fd: Int32, name: String, stolen: Bool = false, pid: Int32, number: Int32) {
        guard let cookie = Self.cookie(of: fd) else { return }
        let connection = Connection(name: name, stolen: stolen, pid: pid, number: number)
        if tracked.withLock({ $0.updateValue(connection, forKey: cookie) }) == nil { open.begin() }
    }

    /// The process a thread belongs to (`Tgid:` in /proc/TID/status).
    static func threadGroup(of thread: Int32) -> Int32? {
        ProcessTree.field("Tgid", in: "/proc/\(thread)/status").flatMap { Int32($0) }
    }

    /// The link to the agent is gone: every open connection of the program is reset, both ways, as a relay
    /// through the agent would be (connect with AF_UNSPEC on the program's socket, found again by its
    /// descriptor number and checked by its cookie, since the number may have been reused since).
    package func resetAll(reason: String) {
        let connections = tracked.withLock { tracked in
            defer { tracked = [:] }
            return tracked
        }
        for _ in connections { open.end() }
        for (cookie, connection) in connections {
            // The thread's process, found only now: reading /proc at every connection would cost each one.
            let process = Self.threadGroup(of: connection.pid) ?? connection.pid
            guard let fd = ProgramDescriptor.duplicate(pid: process, number: connection.number),
                Self.cookie(of: fd.raw) == cookie
            else { continue }
            // A socket the program closed or reset meanwhile has nothing left to reset.
            try? Sockets.disconnect(fd.raw)
            log(
                TraceEvent(
                    time: wallClock.wall(at: Clock.monotonic()), pid: connection.pid, syscall: "close",
                    arguments: nil, route: .remote, outcome: .continued, durationNanos: 0,
                    note: "\(connection.name) reset: \(reason)"))
        }
    }

    /// Waits (a little) for the ends of connections the program closed as it exited.
    package func drain(milliseconds: Int) {
        open.waitUntilIdle(nanoseconds: UInt64(milliseconds) * 1_000_000)
    }

    /// On the loop: every event queued. ENOBUFS (the kernel dropped some) only means those ends go unlogged.
    private func readEvents() {
        while true {
            let buffer: [UInt8]
            do throws(SystemCallError) {
                buffer = try Sockets.receive(socket.raw, upTo: 64 << 10)
                guard !buffer.isEmpty else { return }
            } catch  where error.errno == .noBufferSpace {
                continue
            } catch {
                return
            }
            for event in Self.parse(buffer) { record(event) }
        }
    }

    struct Ended: Equatable {
        let cookie: UInt64
        let bytesSent: UInt64
        let bytesReceived: UInt64
    }

    /// Netlink messages (nlmsghdr, 16 bytes) of SOCK_DIAG_BY_FAMILY (20): struct inet_diag_msg (72 bytes,
    /// the cookie at 44), then attributes (nlattr: length, type); INET_DIAG_INFO (2) holds tcp_info, whose
    /// tcpi_bytes_acked is at 120 and tcpi_bytes_received at 128.
    static func parse(_ bytes: [UInt8]) -> [Ended] {
        var events: [Ended] = []
        var offset = 0
        while offset + 16 <= bytes.count {
            let length = Int(bytes.loadLittleEndian(UInt32.self, at: offset))
            let type = bytes.loadLittleEndian(UInt16.self, at: offset + 4)
            guard length >= 16, offset + length <= bytes.count else { break }
            defer { offset += (length + 3) & ~3 }
            guard type == 20, length >= 16 + 72 else { continue }
            let message = offset + 16
            let cookie = bytes.loadLittleEndian(UInt64.self, at: message + 44)
            var sent: UInt64 = 0
            var received: UInt64 = 0
            var attribute = message + 72
            while attribute + 4 <= offset + length {
                let attributeLength = Int(bytes.loadLittleEndian(UInt16.self, at: attribute))
                let attributeType = bytes.loadLittleEndian(UInt16.self, at: attribute + 2)
                guard attributeLength >= 4 else { break }
                if attributeType == 2 && attributeLength >= 4 + 136 {
                    sent = bytes.loadLittleEndian(UInt64.self, at: attribute + 4 + 120)
                    received = bytes.loadLittleEndian(UInt64.self, at: attribute + 4 + 128)
                }
                attribute += (attributeLength + 3) & ~3
            }
            events.append(Ended(cookie: cookie, bytesSent: sent, bytesReceived: received))
        }
        return events
    }

    private func record(_ event: Ended) {
        guard let connection = tracked.withLock({ $0.removeValue(forKey: event.cookie) }) else { return }
        open.end()
        log(
            TraceEvent(
                time: wallClock.wall(at: Clock.monotonic()), pid: connection.pid, syscall: "close", arguments: nil,
                route: .remote, outcome: .continued, durationNanos: 0,
                note: connection.stolen
                    ? "\(connection.name) ended: stolen, \(event.bytesReceived) bytes in, \(event.bytesSent) out"
                    : "\(connection.name) ended: \(event.bytesSent) bytes sent, \(event.bytesReceived) received"
            ))
    }
}
