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
        subcommands: [Trace.self, Doctor.self]
    )

    /// Logging for sysmirror's own messages (not the trace log): standard error, `sysmirror: ` first.
    static func bootstrapLogging(quiet: Bool) {
        LoggingSystem.bootstrap { label in
            var handler = PlainLogHandler(label: label)
            handler.logLevel = quiet ? .error : .notice
            return handler
        }
    }
}
