import AgentLink
import ArgumentParser
import Configuration
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

struct Trace: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run PROGRAM under sysmirror, logging the file, exec and network calls it makes.",
        discussion: """
            The exit status is the program's, or 128+N when a signal N killed it. Descendants that outlive \
            the program stay served until they exit. setuid programs run without their privileges \
            (the filter needs no_new_privs).
            """
    )

    @Option(
        help: ArgumentHelp(
            "The agent serving the pod's files and environment: unix:/path, HOST:PORT or PORT.", valueName: "ADDRESS"))
    var agent: String?

    @Option(name: .customLong("token-file"), help: ArgumentHelp("The agent's session token.", valueName: "FILE"))
    var tokenFile: String?

    @Option(help: ArgumentHelp("Settings in YAML or JSON (docs/configuration.md); flags win.", valueName: "FILE"))
    var config: String?

    @Option(
        name: .customLong("fs-mode"),
        help:
            "local: all files local; read (default): reads from the pod, writes local; write: reads and writes in the pod."
    )
    var fsMode: FileSystemMode?

    @Flag(name: .customLong("no-remote-env"), help: "Keep the local environment; take nothing from the pod's.")
    var noRemoteEnv = false

    @Option(
        name: .customLong("env-include"),
        help: ArgumentHelp("Take only the pod's variables matching this glob (repeatable).", valueName: "PATTERN"))
    var envInclude: [String] = []

    @Option(
        name: .customLong("env-exclude"),
        help: ArgumentHelp("Do not take the pod's variables matching this glob (repeatable).", valueName: "PATTERN"))
    var envExclude: [String] = []

    @Flag(
        name: .customLong("no-outgoing"),
        help: "Keep all network traffic local; by default connections to anything but loopback leave from the pod.")
    var noOutgoing = false

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
        let (sink, ownsSink) = try openLog()
        let environment = currentEnvironment()
        let options = TraceSession.Options(
            command: command, environment: environment, logSink: sink, closesLogSink: ownsSink,
            logFormat: logFormat, routeSendmsg: !noTraceSendmsg, remote: try remoteOptions(environment: environment))
        let status: Int32
        do {
            status = try TraceSession(options: options, logger: logger).run()
        } catch {
            logger.error("\(error.message)")
            throw ExitCode(error.exitStatus)
        }
        throw ExitCode(status)
    }

    /// The agent and rules from the flags, over the config file; nil without an agent.
    func remoteOptions(environment: [String]) throws -> TraceSession.RemoteOptions? {
        let settings: SessionConfig
        do {
            settings =
                try config.map { path throws(ConfigError) in try SessionConfig.load(path: path) } ?? SessionConfig()
        } catch {
            throw ValidationError(error.message)
        }
        guard let address = agent ?? settings.agent?.address else {
            if fsMode != nil || noRemoteEnv || !envInclude.isEmpty || !envExclude.isEmpty || tokenFile != nil
                || noOutgoing
            {
                throw ValidationError(
                    "--fs-mode, --token-file, --no-outgoing and the --env options need an agent: add --agent ADDRESS (or agent.address in --config)."
                )
            }
            return nil
        }
        guard let tokenPath = tokenFile ?? settings.agent?.tokenFile else {
            throw ValidationError("--agent needs --token-file FILE, the same token the agent was started with.")
        }
        do {
            let mode = try fsMode ?? settings.fileSystemMode() ?? .read
            func variable(_ name: String) -> String? {
                environment.last { $0.hasPrefix(name + "=") }.map { String($0.dropFirst(name.count + 1)) }
            }
            let program: String? =
                if case .found(let path) = ExecutableLookup.resolve(command[0], searchPath: variable("PATH")) {
                    path
                } else { nil }
            let files = try FileRules(
                mode: mode, overrides: settings.fs?.overrides ?? FileOverrides(), home: variable("HOME"),
                workingDirectory: WorkingDirectory.current(), program: program)
            let remoteEnvironment = !noRemoteEnv && settings.env?.remote != false
            let merge = EnvironmentMerge(
                include: envInclude.isEmpty ? settings.env?.include ?? [] : envInclude,
                exclude: envExclude + (settings.env?.exclude ?? []))
            let outgoing = try OutgoingRules(
                enabled: !noOutgoing && settings.outgoing?.enabled != false, local: settings.outgoing?.local ?? [],
                remote: settings.outgoing?.remote ?? [], resolve: HostResolver.addresses)
            return TraceSession.RemoteOptions(
                address: try AgentAddress(parsing: address), token: try TokenFile.read(tokenPath), files: files,
                environment: remoteEnvironment ? merge : nil, outgoing: outgoing)
        } catch {
            throw ValidationError("\(error)")
        }
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
                throw ValidationError("Cannot write the trace log to \(path): \(error)")
            }
        }
    }

    func currentEnvironment() -> [String] {
        var result: [String] = []
        var cursor = environ
        while let entry = cursor.pointee {
            result.append(String(cString: entry))
            cursor += 1
        }
        return result
    }
}

/// getcwd, without Foundation.
enum WorkingDirectory {
    static func current() -> String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX))
        guard getcwd(&buffer, buffer.count) != nil else { return nil }
        return String(cString: buffer)
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
