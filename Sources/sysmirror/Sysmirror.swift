import ArgumentParser
import Logging

@main
struct Sysmirror: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a local program as if it ran inside a Kubernetes pod, at the syscall boundary.",
        discussion: """
            sysmirror runs a program under a seccomp user-notify filter and serves the system calls it \
            intercepts. No root, no LD_PRELOAD: static and Go binaries are covered, and every child process.
            """,
        version: "0.1.0",
        subcommands: [Trace.self, EnvCommand.self, AgentCommand.self, Doctor.self]
    )

    /// Logging for sysmirror's own messages (not the trace log): standard error, `sysmirror: ` first.
    static func bootstrapLogging(quiet: Bool) {
        bootstrapLogging(level: quiet ? .error : .notice, name: "sysmirror", timestamps: false)
    }

    /// `name` leads each line; a long-running agent's lines carry their time too.
    static func bootstrapLogging(level: Logger.Level, name: String, timestamps: Bool) {
        LoggingSystem.bootstrap { label in
            var handler = PlainLogHandler(label: label, name: name, timestamps: timestamps)
            handler.logLevel = level
            return handler
        }
    }
}
