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
            must present the token in --token-file, or one whose SHA-256 is --token-sha256. The agent exits after --idle-timeout seconds without a \
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
    var tokenFile: String?

    @Option(
        name: .customLong("token-sha256"),
        help: ArgumentHelp(
            "Accept the token whose SHA-256 is this (64 hex digits): how `trace --target` starts agents, so that the pod spec never holds the token.",
            valueName: "HEX"))
    var tokenDigest: String?

    @Option(
        name: .customLong("idle-timeout"),
        help: ArgumentHelp("Exit after this many seconds without a session.", valueName: "S"))
    var idleTimeout: Int64 = AgentServer.defaultIdleTimeout

    @Option(
        name: .customLong("watch-limit"),
        help: ArgumentHelp(
            "Watch at most this many files and directories for the sessions' file caches (default: as many as the kernel allows); paths past it are not cached.",
            valueName: "N"))
    var watchLimit: Int?

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
        switch (tokenFile, tokenDigest) {
        case (nil, nil): throw ValidationError("Give the session token: --token-file FILE or --token-sha256 HEX.")
        case (.some, .some): throw ValidationError("--token-file and --token-sha256 both set the token: give one.")
        case (nil, let digest?) where SessionToken(sha256: digest) == nil:
            throw ValidationError("--token-sha256 takes 64 hex digits (a SHA-256), not \(digest.debugDescription).")
        default: break
        }
        guard idleTimeout > 0 else { throw ValidationError("--idle-timeout must be a positive number of seconds.") }
        if let watchLimit, watchLimit < 0 {
            throw ValidationError("--watch-limit takes a number of watches, 0 or more.")
        }
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
            let token = try tokenFile.map { .exact(try TokenFile.read($0)) } ?? SessionToken(sha256: tokenDigest!)!
            let spec: TargetSpec =
                pid.map { .process(pid: $0) } ?? .directory(root: root!, environmentFile: environmentFile)
            let configuration = AgentServer.Configuration(
                listen: try AgentAddress(parsing: listen), target: try Target(spec), token: token,
                idleTimeout: .seconds(idleTimeout), watchLimit: watchLimit ?? .max)
            try AgentServer.run(configuration, logger: logger)
        } catch {
            logger.error("\(error)")
            throw ExitCode(1)
        }
    }
}
