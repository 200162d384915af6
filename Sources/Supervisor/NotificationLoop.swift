import CSeccomp
import LinuxSystem
import Logging
import RemoteServices
import Routing
import Synchronization
import SyscallDecoding
import UserNotification

#if canImport(Glibc)
    import Glibc
#endif

/// The receiving thread: takes each intercepted call, reads its arguments, decides, answers and logs, all on
/// this thread, since a hand-off to another thread costs a cross-CPU wake-up that is larger than the whole
/// decision. Only work that must wait (a round trip to the agent) leaves this thread: `RemoteFiles` sends
/// the request and the link's thread answers when the agent replies.
public final class NotificationLoop: Sendable {
    let listener: NotificationListener
    let table: SyscallTable
    let policy: RoutingPolicy
    let log: TraceLog
    let logger: Logger
    /// Serves file calls routed remote; nil without an agent.
    let remote: RemoteFiles?
    /// Serves outgoing traffic routed remote; nil without an agent.
    let sockets: RemoteSockets?
    /// Serves listen and accept for the pod's incoming traffic; nil without it.
    let incoming: RemoteIncoming?
    private let foreignABIWarned = Atomic<Bool>(false)
    private let wallClock = Clock.WallFromMonotonic()
    /// Calls received and not yet logged.
    private let inFlight: ActivityCount

    init(
        listener: NotificationListener, table: SyscallTable, policy: RoutingPolicy, log: TraceLog, logger: Logger,
        remote: RemoteFiles? = nil, sockets: RemoteSockets? = nil, incoming: RemoteIncoming? = nil
    ) throws(SystemCallError) {
        inFlight = try ActivityCount()
        self.remote = remote
        self.sockets = sockets
        self.incoming = incoming
        self.listener = listener
        self.table = table
        self.policy = policy
        self.log = log
        self.logger = logger
    }

    /// Starts the receiving thread, detached: it ends by itself once no filtered process is left (6.6+
    /// kernels), and otherwise with the process.
    public func start() throws {
        try ThreadHandle.detached(name: "sysmirror-recv") { [self] in run() }
    }

    private func run() {
        while true {
            do {
                let notification = try listener.receive()
                inFlight.begin()
                handle(notification)
                inFlight.end()
            } catch let error where error.errno == .interrupted {
                continue
            } catch let error where error.errno == .noSuchFileOrDirectory {
                // The call was interrupted before we received it, or (6.6+) every filtered process is gone.
                if listener.hasHungUp() { return }
            } catch {
                // Never leave the program waiting on a supervisor that stopped: with the listener closed, the
                // kernel answers its routed calls with ENOSYS.
                logger.error(
                    "stopped serving intercepted calls; from now on they fail with ENOSYS",
                    metadata: ["error": "\(error)"])
                try? listener.descriptor.close()
                return
            }
        }
    }

    /// Waits until every call received so far has been answered and logged, and files written for the pod
    /// have reached it. Once the last process is reaped no call can arrive any more, and each one it made
    /// was counted before its answer let it go on.
    public func drain() {
        remote?.drain(seconds: 30)
        sockets?.connections?.drain(milliseconds: 300)
        incoming?.drain(milliseconds: 300)
        inFlight.waitUntilIdle(nanoseconds: 1_000_000_000)
    }

    func handle(_ notification: Notification) {
        let started = Clock.monotonic()
        let abi = notification.abi
        var decoded: DecodedSyscall?
        let name: String
        if abi == .x86_64, let spec = table[notification.number] {
            decoded = SyscallDecoder().decode(
                spec, arguments: notification.arguments, memory: ProcessMemory(pid: notification.pid))
            name = spec.name
        } else {
            name = foreignName(notification)
        }
        // What serves the call: the one dispatch point, on the table's data.
        var file: FileCall?
        var path: [UInt8]?
        var socket: ProgramSocket?
        switch decoded?.spec.service {
        case .listen?, .accept?:
            if let incoming, let decoded, serveIncoming(notification, decoded, incoming, started: started) { return }
        case .datagramReceive?:
            if let datagrams = sockets?.datagrams, datagrams.isRelaying, let decoded,
                serveDatagramReceive(notification, decoded, datagrams, started: started)
            {
                return
            }
        case .file?:
            if let remote, let decoded, let call = FileCall(decoded) {
                file = call
                path = remote.absolutePath(of: call, pid: notification.pid)
            }
        case .outgoing?:
            if let sockets, decoded?.socketAddress?.isInternet == true {
                socket = sockets.inspect(
                    pid: notification.pid, number: Int32(truncatingIfNeeded: notification.arguments[0]))
            }
        case .exec?, .bind?, .hostname?, nil:
            break
        }
        let decision = policy.decide(decoded, abi: abi, file: file, path: path, socket: socket?.facts)
        // Before acting on what was read, make sure it belonged to this call and not to a process that died
        // and whose pid was reused. A plain answer needs no such check (see Decision.hasEffects).
        if decision.hasEffects && !listener.isPending(notification.id) { return }
        if decision.route == .remote, let remote {
            let resolved = path.flatMap { $0 != file?.path ? "pod path " + String(decoding: $0, as: UTF8.self) : nil }
            let done = completion(
                notification, name: name, decoded: decoded, started: started,
                notes: [resolved, decision.note].compactMap { $0 })
            if let socket, let sockets, let decoded {
                sockets.serve(notification, call: decoded, socket: socket, done: done)
            } else {
                remote.serve(notification, call: decoded, file: file, path: path, done: done)
            }
            return
        }
        if decision.route == .denied { warnOnceAboutForeignABI(notification, name: name) }

        var outcome: Outcome = decision.errno.map { .failed(errno: $0) } ?? .continued
        // Taken before the answer: with SYNC_WAKE_UP the program runs on this CPU as soon as it is answered,
        // and this thread resumes only when the program waits again.
        let answered = Clock.monotonic()
        do {
            if let errno = decision.errno {
                try listener.fail(notification.id, errno: errno)
            } else {
                try listener.continueCall(notification.id)
            }
        } catch let error where error.errno == .noSuchFileOrDirectory {
            // Gone while we decided (a signal, or the thread died): nothing to answer, nothing held.
            outcome = .interrupted
        } catch {
            logger.error("could not answer an intercepted call", metadata: ["error": "\(error)"])
        }
        log.record(
            TraceEvent(
                time: wallClock.wall(at: started), pid: notification.pid, syscall: name, arguments: decoded,
                route: decision.route,
                outcome: outcome, durationNanos: answered - started, note: decision.note))
    }

    /// Counts a call answered from another thread as in flight, and returns what logs it and ends the count.
    private func completion(
        _ notification: Notification, name: String, decoded: DecodedSyscall?, started: UInt64, notes: [String] = []
    ) -> PendingCall.Completion {
        inFlight.begin()
        return { [self] outcome, route, note, answered in
            log.record(
                TraceEvent(
                    time: wallClock.wall(at: started), pid: notification.pid, syscall: name, arguments: decoded,
                    route: route, outcome: outcome, durationNanos: answered - started,
                    note: (notes + [note].compactMap { $0 }).joined(separator: "; ").nonEmpty))
            inFlight.end()
        }
    }

    /// listen and accept on the sockets whose ports take the pod's traffic; false for the others.
    private func serveIncoming(
        _ notification: Notification, _ call: DecodedSyscall, _ incoming: RemoteIncoming, started: UInt64
    ) -> Bool {
        let done = completion(notification, name: call.spec.name, decoded: call, started: started)
        let taken =
            call.spec.service == .listen
            ? incoming.serveListen(notification, done: done)
            : incoming.serveAccept(notification, call: call, done: done)
        if !taken { inFlight.end() }  // not counted: `done` never runs
        return taken
    }

    /// recvfrom or recvmsg on a program socket that sysmirror relays to the pod (RemoteDatagrams); false for
    /// the others.
    private func serveDatagramReceive(
        _ notification: Notification, _ call: DecodedSyscall, _ datagrams: RemoteDatagrams, started: UInt64
    ) -> Bool {
        guard
            let relayed = datagrams.relayedSocket(
                pid: notification.pid, number: Int32(truncatingIfNeeded: notification.arguments[0])),
            listener.isPending(notification.id)
        else { return false }
        let done = completion(notification, name: call.spec.name, decoded: call, started: started)
        datagrams.serveReceive(notification, call: call.spec.call, relayed, done: done)
        return true
    }

    private func foreignName(_ notification: Notification) -> String {
        switch notification.abi {
        case .i386:
            SeccompFilter.name(of: notification.number, architecture: notification.architecture)
        case .x32:
            SeccompFilter.name(of: notification.number, architecture: seccomp_arch_resolve_name("x32"))
        case .x86_64:
            "syscall_\(notification.number)"
        }
    }

    private func warnOnceAboutForeignABI(_ notification: Notification, name: String) {
        guard !foreignABIWarned.exchange(true, ordering: .relaxed) else { return }
        logger.warning(
            "pid \(notification.pid) called \(name) through the \(notification.abi.rawValue) system call ABI, which sysmirror does not serve: such calls fail with ENOSYS"
        )
    }
}

extension String {
    var nonEmpty: String? { isEmpty ? nil : self }
}
