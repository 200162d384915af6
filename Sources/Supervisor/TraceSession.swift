import AgentLink
import AgentProtocol
import CSysmirror
import LinuxSystem
import Logging
import RemoteServices
import Routing
import Synchronization
import SyscallDecoding
import SystemPackage
import UserNotification

#if canImport(Glibc)
    import Glibc
#endif

/// `sysmirror trace`: runs a program under the filter, serves it, and returns its exit status.
///
/// The program stays in sysmirror's process group and keeps the terminal. Signals the terminal sends reach
/// it directly; SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to sysmirror itself are forwarded. Descendants that
/// outlive the program stay served: sysmirror is their subreaper and exits once the last one is gone, with
/// the program's status.
public final class TraceSession: Sendable {
    public struct Options: Sendable {
        public var command: [String]
        public var environment: [String]
        public var logSink: FileDescriptor?
        public var closesLogSink: Bool
        public var logFormat: TraceFormat
        public var routeSendmsg: Bool
        /// The agent and the rules for what it serves; nil runs everything locally.
        public var remote: RemoteOptions?
        /// Children sysmirror runs beside the program (kubectl port-forward, which may be restarted): not the
        /// program's, so neither waited for nor served.
        public var helpers: @Sendable () -> Set<Int32> = { [] }
        /// Any process of the user may attach a debugger to the program, also under Yama's ptrace_scope 1.
        public var allowsAttach = false

        public init(
            command: [String], environment: [String], logSink: FileDescriptor?, closesLogSink: Bool,
            logFormat: TraceFormat, routeSendmsg: Bool = true, remote: RemoteOptions? = nil
        ) {
            self.remote = remote
            self.command = command
            self.environment = environment
            self.logSink = logSink
            self.closesLogSink = closesLogSink
            self.logFormat = logFormat
            self.routeSendmsg = routeSendmsg
        }
    }

    /// How a session reaches its agent, and what it takes from it.
    public struct RemoteOptions: Sendable {
        public var address: AgentAddress
        public var token: [UInt8]
        /// A session at `address` already through its handshake (the one that found a cluster's agent
        /// answering), taken as the link.
        public var opened: OpenedSession?
        public var files: FileRules
        /// How the pod's environment is merged; nil keeps the local environment only (`--no-remote-env`).
        public var environment: EnvironmentMerge?
        public var outgoing: OutgoingRules
        /// Which listening ports take the pod's incoming traffic, and how.
        public var incoming = IncomingRules.off
        /// Registers what to do when the agent is gone for good (a `pod/NAME` target's pod deleted): the link
        /// then stops waiting to come back, and remote calls fail at once.
        public var whenAgentIsLost: (@Sendable (@escaping @Sendable (String) -> Void) -> Void)?
        /// Whether uname and /etc/hostname are the pod's (not for a targetless agent, whose pod is its own).
        public var servesHostname = true
        /// Whether the pod's file answers are kept while the agent watches them (`--fs-cache`).
        public var cachesFiles = true

        public init(
            address: AgentAddress, token: [UInt8], files: FileRules, environment: EnvironmentMerge?,
            outgoing: OutgoingRules
        ) {
            self.address = address
            self.token = token
            self.files = files
            self.environment = environment
            self.outgoing = outgoing
        }
    }

    /// What the session got from the agent before the program started.
    struct Link {
        let client: AgentClient
        let hostname: [UInt8]
        let directories: RemoteDirectories
        /// The agent's socket channel, when it is on this machine (a unix socket) and outgoing traffic is on.
        let sockets: SocketChannel?
        /// The pod's reports of TCP connections' ends, when the socket channel could give them.
        let connections: SharedDescriptor?
        /// The serving half's one event loop: relays, copies, waits, pumps, refills and pings.
        let loop: EventLoop
        /// What the session keeps of the pod's file answers; nil with `--fs-cache off`.
        let cache: FileCache?
    }

    /// Signals sysmirror forwards to the program when they are sent to sysmirror itself.
    static let forwarded: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT]
    let options: Options
    let logger: Logger
    private let program = Mutex<(pid: Int32, exited: Bool)>((0, false))
    private let loop = Mutex<NotificationLoop?>(nil)

    public init(options: Options, logger: Logger) {
        self.options = options
        self.logger = logger
    }

    /// Runs the program to the end of it and of its descendants; returns the status to exit with.
    public func run() throws(TraceFailure) -> Int32 {
        guard let name = options.command.first else { throw .internalError("no program given") }
        var environment = options.environment
        let link = try options.remote.map { remote throws(TraceFailure) in
            try connect(remote, environment: &environment)
        }
        defer {
            link?.directories.removeAll()
            link?.client.close()
            link?.loop.close()
        }
        let environmentPath = options.environment.last { $0.hasPrefix("PATH=") }.map { String($0.dropFirst(5)) }
        guard case .found(let path) = ExecutableLookup.resolve(name, searchPath: environmentPath) else {
            throw .commandNotFound(name)
        }
        let inherited = InheritedSignals.capture()
        blockSignalsForSupervisor()
        _ = sysm_become_child_subreaper()

        let filter: FilterProgram
        do {
            filter = try SeccompFilter.compile(
                .trace(
                    routeSendmsg: options.routeSendmsg, withAgent: link != nil,
                    withIncoming: link != nil && options.remote?.incoming.mode != .off,
                    withLinkDatagrams: link != nil && link?.sockets == nil && options.remote?.outgoing.enabled == true))
        } catch {
            throw .filter(error.description)
        }
        let log: TraceLog
        do {
            log = try TraceLog(
                sink: options.logSink, format: options.logFormat, closesSink: options.closesLogSink, table: .x86_64,
                logger: logger)
        } catch {
            throw .internalError("could not start the trace log: \(error)")
        }
        defer { log.close() }

        let spawned: SpawnedProgram
        do {
            spawned = try Spawner.spawn(
                path: path, arguments: options.command, environment: environment, filter: filter,
                signals: inherited, allowsAnyTracer: options.allowsAttach
            ) { program in
                try prepare(program, log: log, link: link)
            }
        } catch let failure as TraceFailure {
            throw failure
        } catch let error as SpawnError {
            throw .cannotExecute(path, error.stage, error.errno)
        } catch {
            throw .internalError("could not start \(name): \(error)")
        }
        let status = reap(spawned.pid, name: name)
        loop.withLock { $0?.drain() }
        return status
    }

    /// Opens the session with the agent: the handshake, with the pod's hostname and environment asked in the
    /// same round trip; the environment is merged into `environment`. Fails before anything runs when the
    /// agent cannot be used.
    private func connect(_ remote: RemoteOptions, environment: inout [String]) throws(TraceFailure) -> Link {
        let client: AgentClient
        let answers: [Result<Response, AgentCallError>]
        // Where the pod's DNS is the program's, each lookup re-reads resolv.conf and hosts: kept from the start.
        let cache =
            remote.cachesFiles
            ? FileCache(prefetching: remote.outgoing.enabled ? FileCache.resolverFiles : [], logger: logger) : nil
        do {
            // Over TCP (a port-forward, which drops and is restarted), a broken link is connected again.
            var resumption: AgentClient.Resumption?
            if case .tcp = remote.address { resumption = AgentClient.Resumption(token: remote.token) }
            (client, answers) = try AgentClient.connect(
                to: remote.address, token: remote.token, resumption: resumption, over: remote.opened, logger: logger,
                asking: [.hostname] + (remote.environment != nil ? [.environment] : []),
                alsoSending: cache?.firstRequests() ?? [])
            cache?.attach(client)
            remote.whenAgentIsLost?({ [client] reason in client.abandon(reason) })
        } catch {
            throw .agent(error.description)
        }
        do {
            let hostname = try answers[0].get()
            let podEnvironment = try answers.dropFirst().first?.get()
            guard case .text(let name) = hostname else { throw AgentCallError("unexpected answer \(hostname)") }
            if let merge = remote.environment, case .environment(let entries)? = podEnvironment {
                environment = merge.merge(local: environment, pod: entries.map { String(decoding: $0, as: UTF8.self) })
            }
            let loop = try EventLoop(name: "sysmirror-serve")
            var sockets: SocketChannel?
            var connections: SharedDescriptor?
            // The socket channel serves outgoing sockets and stolen ports' listening sockets.
            if remote.outgoing.enabled || remote.incoming.mode != .off, case .unix(let path) = remote.address {
                let channel = try SocketChannel.connect(agentPath: path, token: remote.token, loop: loop)
                sockets = channel
                connections = Self.connectionEvents(from: channel, on: loop)
            }
            logger.notice("connected to the \(client.agentDescription) at \(remote.address)")
            return Link(
                client: client, hostname: name, directories: try RemoteDirectories(), sockets: sockets,
                connections: connections, loop: loop, cache: cache)
        } catch let error as AgentConnectError {
            client.close()
            throw .agent(error.description)
        } catch {
            client.close()
            throw .agent("the agent at \(remote.address) failed at the start of the session: \(error).")
        }
    }

    /// The pod's netlink socket for connections' ends, asked for once at the start (nil when the agent
    /// cannot give it: connections then go unlogged).
    private static func connectionEvents(from channel: SocketChannel, on loop: EventLoop) -> SharedDescriptor? {
        let answer = Mutex<SharedDescriptor?>(nil)
        let done = Latch()
        loop.execute {
            channel.connectionEvents { result in
                answer.withLock { $0 = try? result.get() }
                done.signal()
            }
        }
        done.wait()
        return answer.withLock { $0 }
    }

    /// While the child waits before exec: check the kernel, then start serving.
    private func prepare(_ program: SpawnedProgram, log: TraceLog, link: Link?) throws {
        let features = KernelFeatures.probe(program)
        if let missing = KernelFeatures.missingRequirement(features) { throw TraceFailure.kernelLacks(missing) }
        if !KernelFeatures.has(.waitKillableRecv, in: features) {
            logger.warning(
                "this kernel lacks SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (5.19): signals may restart intercepted calls"
            )
        }
        if !KernelFeatures.has(.syncWakeUp, in: features) {
            logger.warning(
                "this kernel lacks SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (6.6): each intercepted call costs a cross-CPU wake-up"
            )
        }
        let remote = try link.map { link throws in
            try RemoteFiles(
                client: link.client, listener: program.listener, directories: link.directories,
                hostname: link.hostname,
                cache: link.cache, loop: link.loop, logger: logger)
        }
        // The ends of the pod's TCP connections that the program holds itself, with no relay: outgoing ones,
        // and stolen ones taken from the pod's listening socket.
        let connections = link.flatMap { link in
            link.connections.flatMap { try? ConnectionEvents(socket: $0, log: log.record, loop: link.loop) }
        }
        if let link, let connections {
            link.client.whenLinkFails { reason in connections.resetAll(reason: reason) }
        }
        let sockets = try link.flatMap { link throws -> RemoteSockets? in
            guard let remoteOptions = options.remote, remoteOptions.outgoing.enabled else { return nil }
            // Without the socket channel (a port-forward), TCP, UDP and DNS travel on the link.
            let throughLink = link.sockets == nil
            return try RemoteSockets(
                channel: link.sockets,
                streams: throughLink ? link.client : nil,
                datagrams: throughLink
                    ? RemoteDatagrams(
                        client: link.client, names: PodNames(client: link.client, files: link.cache, logger: logger),
                        loop: link.loop,
                        listener: program.listener, logger: logger) : nil,
                listener: program.listener, loop: link.loop, logger: logger, connections: connections,
                linkIsUp: { [client = link.client] in client.isActive })
        }
        let policy =
            options.remote.map {
                RoutingPolicy(files: $0.files, servesHostname: $0.servesHostname, outgoing: $0.outgoing)
            }
            ?? RoutingPolicy()
        let incoming = try link.flatMap { link throws -> RemoteIncoming? in
            guard let remote = options.remote, remote.incoming.mode != .off else { return nil }
            return try RemoteIncoming(
                client: link.client,
                sockets: link.sockets, connections: connections, rules: remote.incoming, listener: program.listener,
                log: log.record, loop: link.loop, logger: logger)
        }
        let loop = try NotificationLoop(
            listener: program.listener, table: .x86_64, policy: policy, log: log, logger: logger, remote: remote,
            sockets: sockets, incoming: incoming)
        try loop.start()
        self.loop.withLock { $0 = loop }
        self.program.withLock { $0 = (program.pid, false) }
        try ThreadHandle.detached(name: "sysmirror-sig") { [self] in forwardSignals() }
    }

    /// Blocks the forwarded signals in this thread too (threads sysmirror starts have them blocked from their
    /// start, ThreadHandle.blockedSignals), so that one thread takes them with sigwaitinfo; and SIGPIPE, so a
    /// closed log pipe is an error to handle, not a death.
    private func blockSignalsForSupervisor() {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in ThreadHandle.blockedSignals { sigaddset(&set, signal) }
        _ = pthread_sigmask(SIG_BLOCK, &set, nil)  // fails only for a bad `how`
    }

    private func forwardSignals() {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in Self.forwarded { sigaddset(&set, signal) }
        while true {
            var info = siginfo_t()
            let signal = sigwaitinfo(&set, &info)
            guard signal > 0 else { continue }
            // The terminal sent it to the whole foreground process group: the program has it already.
            if info.si_code == SI_KERNEL { continue }
            let (pid, exited) = program.withLock { $0 }
            // A process that exited meanwhile (ESRCH) needs the signal no more.
            if !exited {
                _ = kill(pid, signal)
            } else {
                for descendant in ProcessTree.descendants(of: getpid(), excluding: options.helpers()) {
                    _ = kill(descendant, signal)
                }
            }
        }
    }

    /// Reaps the program and every orphan reparented to sysmirror, until none is left.
    private func reap(_ pid: Int32, name: String) -> Int32 {
        var exitStatus: Int32 = 0
        while true {
            var status: Int32 = 0
            let reaped = waitpid(-1, &status, __WALL)
            if reaped == -1 {
                if errno == EINTR { continue }
                break  // ECHILD: nobody is left under the filter
            }
            if reaped == pid {
                exitStatus = shellExitStatus(status)
                program.withLock { $0.exited = true }
            } else if HelperStatuses.reaped(reaped, status: status) {
                continue  // a kubectl of the session's, whose owner waits for it
            }
            guard program.withLock({ $0.exited }) else { continue }
            let remaining = ProcessTree.descendants(of: getpid(), excluding: options.helpers())
            if remaining.isEmpty { break }
            if reaped == pid {
                logger.notice(
                    "\(name) exited; sysmirror keeps serving its \(remaining.count) remaining descendant process(es) (\(remaining.map(String.init).joined(separator: ", "))) until they exit. SIGINT or SIGTERM to sysmirror (pid \(getpid())) is passed on to them."
                )
            }
        }
        return exitStatus
    }
}
