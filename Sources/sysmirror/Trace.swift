import AgentLink
import ArgumentParser
import Configuration
import Incoming
import Kubernetes
import LinuxSystem
import Logging
import Routing
import Supervisor
import SyscallDecoding
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

extension TraceFormat: ExpressibleByArgument {}
extension FileSystemMode: ExpressibleByArgument {}
extension IncomingRules.Mode: ExpressibleByArgument {}

struct Trace: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run PROGRAM under sysmirror, logging the file, exec and network calls it makes.",
        discussion: """
            The exit status is the program's, or 128+N when a signal N killed it. Descendants that outlive \
            the program stay served until they exit. setuid programs run without their privileges \
            (the filter needs no_new_privs).
            """
    )

    @OptionGroup var session: SessionOptions

    @Option(
        name: .customLong("fs-mode"),
        help:
            "local: all files local; read (default): reads from the pod, writes local; write: reads and writes in the pod."
    )
    var fsMode: FileSystemMode?

    @Option(
        name: .customLong("fs-cache"),
        help: ArgumentHelp(
            "on (default): keep the pod's file answers while the agent watches them; off: ask the agent every time.",
            valueName: "on|off"))
    var fsCache: FileCacheSetting?

    @Flag(name: .customLong("no-remote-env"), help: "Keep the local environment; take nothing from the pod's.")
    var noRemoteEnv = false

    @OptionGroup var environmentOptions: EnvironmentOptions

    @Flag(
        name: .customLong("no-outgoing"),
        help: "Keep all network traffic local; by default connections to anything but loopback leave from the pod.")
    var noOutgoing = false

    @Option(
        help: ArgumentHelp(
            "The pod's connections to the ports the program listens on: mirror (default): the pod's application serves them and the program gets a copy of each one's requests; steal: the program gets them instead; off.",
            valueName: "MODE"))
    var incoming: IncomingRules.Mode?

    @Option(
        name: .customLong("port-map"),
        help: ArgumentHelp(
            "The program's port LOCAL takes the pod's port REMOTE (repeatable; default: the same port).",
            valueName: "LOCAL:REMOTE"))
    var portMap: [String] = []

    @Option(
        name: .customLong("steal-header"),
        help: ArgumentHelp(
            "Steal only HTTP requests with a header line (Name: value) matching this regular expression; the others go to the pod's application.",
            valueName: "REGEX"))
    var stealHeader: String?

    @Option(
        name: .customLong("steal-path"),
        help: ArgumentHelp(
            "Steal only HTTP requests whose path matches this regular expression (with --steal-header: both must match).",
            valueName: "REGEX"))
    var stealPath: String?

    @Option(
        name: .long,
        help: ArgumentHelp("Write the trace log to FILE; '-' or no --log: standard error.", valueName: "FILE|-"))
    var log: String?

    @Option(name: .customLong("log-format"), help: "text (like strace) or json (one object per line).")
    var logFormat: TraceFormat = .text

    @Flag(help: "No trace log unless --log is given, and no notes from sysmirror; errors still show.")
    var quiet = false

    @Flag(
        name: .customLong("no-trace-sendmsg"),
        help: "Leave sendmsg unrouted: it cannot be filtered by destination, so each call costs a round trip.")
    var noTraceSendmsg = false

    @Flag(
        help:
            "Let a debugger started elsewhere attach to the program (gdb -p, dlv attach), also where Yama's ptrace_scope is 1 (docs/debugging.md)."
    )
    var allowAttach = false

    @Argument(
        parsing: .postTerminator,
        help: ArgumentHelp(
            "The program and its arguments, after --: everything after -- is the program's.", valueName: "PROGRAM"))
    var command: [String] = []

    mutating func validate() throws {
        guard !command.isEmpty else {
            throw ValidationError(
                "Missing the program to run. Put it after --: sysmirror trace [options] -- PROGRAM [ARGS...]")
        }
    }

    func run() throws {
        Sysmirror.bootstrapLogging(quiet: quiet)
        let logger = Logger(label: "sysmirror")
        try SetupFailure.reported(by: logger, consequence: " The program was not started.") {
            try runSession(logger: logger)
        }
    }

    func runSession(logger: Logger) throws {
        let settings = try session.loadSettings()
        let source = try session.agentSource(settings) { targetless in
            SessionOptions.ClusterFeatures(
                writesFiles: (try? fsMode ?? settings.fileSystemMode()) == .write,
                takesIncoming: (try? incomingRules(settings, targetless: targetless))?.mode ?? .off != .off)
        }
        let environment = currentEnvironment()
        var remote = try remoteOptions(source, settings: settings, environment: environment)
        var cluster: KubernetesSession?
        defer { cluster?.end() }
        if case .cluster(let request) = source {
            let started = try AgentSource.startCluster(request, environment: environment, logger: logger)
            cluster = started
            remote?.address = started.address
            remote?.token = started.token
            remote?.opened = started.takeOpenedSession()
            remote?.whenAgentIsLost = started.whenLost
        }
        let (sink, ownsSink) = try openLog()
        var options = TraceSession.Options(
            command: command, environment: environment, logSink: sink, closesLogSink: ownsSink,
            logFormat: logFormat, routeSendmsg: !noTraceSendmsg, remote: remote)
        if let helpers = cluster?.helpers { options.helpers = helpers }
        options.allowsAttach = allowAttach
        let status: Int32
        do {
            status = try TraceSession(options: options, logger: logger).run()
        } catch {
            logger.error("\(error.message)")
            throw ExitCode(error.exitStatus)
        }
        throw ExitCode(status)
    }

    /// The rules for what the agent serves; nil without an agent. A cluster's address and token are filled
    /// in once its agent answers.
    func remoteOptions(_ source: AgentSource, settings: SessionConfig, environment: [String]) throws
        -> TraceSession.RemoteOptions?
    {
        let address: AgentAddress
        let token: [UInt8]
        var targetless = false
        switch source {
        case .none:
            if fsMode != nil || fsCache != nil || noRemoteEnv || !environmentOptions.isEmpty
                || session.tokenFile != nil
                || noOutgoing || incoming != nil || !portMap.isEmpty || stealHeader != nil || stealPath != nil
            {
                throw ValidationError(
                    "--fs-mode, --fs-cache, --token-file, --no-outgoing, the --env options and the incoming options (--incoming, --port-map, --steal-header, --steal-path) need an agent: add --target KIND/NAME or --agent ADDRESS (or kubernetes.target or agent.address in --config)."
                )
            }
            return nil
        case .given(let text, let tokenPath):
            (address, token) = try AgentSource.endpoint(address: text, tokenFile: tokenPath)
        case .cluster(let request):
            (address, token) = (.tcp(host: "127.0.0.1", port: 1), [])
            targetless = request.target == .targetless
        }
        do {
            // Targetless: the agent's pod has no files or environment of interest, only the cluster's
            // name server in its resolv.conf.
            let mode = targetless ? .local : try fsMode ?? settings.fileSystemMode() ?? .read
            func variable(_ name: String) -> String? {
                environment.last { $0.hasPrefix(name + "=") }.map { String($0.dropFirst(name.count + 1)) }
            }
            let program: String? =
                if case .found(let path) = ExecutableLookup.resolve(command[0], searchPath: variable("PATH")) {
                    path
                } else { nil }
            var overrides = settings.fs?.overrides ?? FileOverrides()
            if targetless { overrides.readOnly.append("^/etc/resolv\\.conf$") }
            let files = try FileRules(
                mode: mode, overrides: overrides, home: variable("HOME"),
                workingDirectory: WorkingDirectory.current(), program: program)
            let remoteEnvironment = !noRemoteEnv && settings.env?.remote != false && !targetless
            let merge = environmentOptions.merge(settings)
            let outgoing = try OutgoingRules(
                enabled: !noOutgoing && settings.outgoing?.enabled != false, local: settings.outgoing?.local ?? [],
                remote: settings.outgoing?.remote ?? [], resolve: HostResolver.addresses)
            var options = TraceSession.RemoteOptions(
                address: address, token: token, files: files,
                environment: remoteEnvironment ? merge : nil, outgoing: outgoing)
            options.servesHostname = !targetless
            options.cachesFiles = fsCache.map { $0 == .on } ?? settings.fs?.cache ?? true
            options.incoming = try incomingRules(settings, targetless: targetless)
            return options
        } catch {
            throw ValidationError("\(error)")
        }
    }

    /// The incoming rules; off for a targetless agent, whose pod serves nothing.
    func incomingRules(_ settings: SessionConfig, targetless: Bool) throws -> IncomingRules {
        let rules = try settings.incomingRules(mode: incoming, portMap: portMap, header: stealHeader, path: stealPath)
        _ = try HTTPFilter(headerPattern: rules.headerPattern, pathPattern: rules.pathPattern)
        guard targetless else { return rules }
        if incoming.map({ $0 != .off }) == true || stealHeader != nil || stealPath != nil || !portMap.isEmpty {
            throw ValidationError(
                "a targetless agent has no application whose traffic to take: incoming traffic needs --target pod/NAME, deployment/NAME or statefulset/NAME"
            )
        }
        return .off
    }

    /// The log's destination: a file (created or truncated, 0644), standard error, or nothing.
    func openLog() throws -> (FileDescriptor?, Bool) {
        switch log {
        case nil: return (quiet ? nil : .standardError, false)
        case "-": return (.standardError, false)
        case let path?:
            do {
                let fd = try FileDescriptor.open(
                    FilePath(path), .writeOnly, options: [.create, .truncate, .closeOnExec],
                    permissions: [.ownerReadWrite, .groupRead, .otherRead])
                return (fd, true)
            } catch {
                throw SetupFailure(
                    message:
                        "cannot write the trace log to \(path): \(error). Give --log a path you can write, or - for standard error."
                )
            }
        }
    }
}

/// getcwd, without Foundation.
enum WorkingDirectory {
    static func current() -> String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX))
        guard getcwd(&buffer, buffer.count) != nil else { return nil }
        return String(decoding: buffer.prefix { $0 != 0 }.map(UInt8.init(bitPattern:)), as: UTF8.self)
    }
}

/// Names in outgoing rules, looked up on this machine when the session starts.
enum HostResolver {
    static func addresses(of name: String) -> [[UInt8]] {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(name, nil, &hints, &list) == 0 else { return [] }
        defer { freeaddrinfo(list) }
        var addresses: [[UInt8]] = []
        var entry = list
        while let info = entry?.pointee {
            if info.ai_family == AF_INET, let address = info.ai_addr {
                address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { pointer in
                    addresses.append(withUnsafeBytes(of: pointer.pointee.sin_addr) { Array($0) })
                }
            } else if info.ai_family == AF_INET6, let address = info.ai_addr {
                address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { pointer in
                    addresses.append(withUnsafeBytes(of: pointer.pointee.sin6_addr) { Array($0) })
                }
            }
            entry = info.ai_next
        }
        return addresses
    }
}

/// `--fs-cache`.
enum FileCacheSetting: String, ExpressibleByArgument, CaseIterable {
    case on, off
}
