import Agent
import AgentLink
import ArgumentParser
import Logging
import NIOCore

struct AgentCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "Serve sessions of `sysmirror trace --agent` from a target: its files, environment and hostname.",
        discussion: """
            The target is a process (--pid: its root, /proc/PID/environ, its namespaces) or a directory \
            (--root, with --env-file for the environment). Paths never leave the target's root. Each session \
            must present the token in --token-file. The agent exits after --idle-timeout seconds without a \
            session (default \(AgentServer.defaultIdleTimeout)).
            """
    )

    @Option(
        help: ArgumentHelp(
            "Where to listen: unix:/path (created 0600), HOST:PORT, or PORT (127.0.0.1).", valueName: "ADDRESS"))
    var listen: String

    @Option(help: "Serve this process: files in /proc/PID/root, environment from /proc/PID/environ.")
    var pid: Int32?

    @Option(help: ArgumentHelp("Serve this directory as the root (instead of --pid).", valueName: "DIR"))
    var root: String?

    @Option(
        name: .customLong("env-file"),
        help: ArgumentHelp("With --root: the environment, as KEY=VALUE lines.", valueName: "FILE"))
    var environmentFile: String?

    @Option(name: .customLong("token-file"), help: ArgumentHelp("The session token.", valueName: "FILE"))
    var tokenFile: String

    @Option(
        name: .customLong("idle-timeout"),
        help: ArgumentHelp("Exit after this many seconds without a session.", valueName: "S"))
    var idleTimeout: Int64 = AgentServer.defaultIdleTimeout

    @Flag(help: "Log only warnings and errors.")
    var quiet = false

    mutating func validate() throws {
        switch (pid, root) {
        case (nil, nil): throw ValidationError("Name the target: --pid PID or --root DIR.")
        case (.some, .some): throw ValidationError("--pid and --root name different targets: give one of them.")
        case (.some, nil) where environmentFile != nil:
            throw ValidationError("--env-file goes with --root; with --pid the environment is the process's own.")
        default: break
        }
        guard idleTimeout > 0 else { throw ValidationError("--idle-timeout must be a positive number of seconds.") }
        do {
            _ = try AgentAddress(parsing: listen)
        } catch {
            throw ValidationError("--listen: \(error)")
        }
    }

    func run() throws {
        Sysmirror.bootstrapLogging(level: quiet ? .warning : .info, name: "sysmirror agent", timestamps: true)
        let logger = Logger(label: "sysmirror-agent")
        do {
            let token = try TokenFile.read(tokenFile)
            let spec: TargetSpec =
                pid.map { .process(pid: $0) } ?? .directory(root: root!, environmentFile: environmentFile)
            let configuration = AgentServer.Configuration(
                listen: try AgentAddress(parsing: listen), target: try Target(spec), token: token,
                idleTimeout: .seconds(idleTimeout))
            try AgentServer.run(configuration, logger: logger)
        } catch {
            logger.error("\(error)")
            throw ExitCode(1)
        }
    }
}
