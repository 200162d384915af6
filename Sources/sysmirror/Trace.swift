import ArgumentParser
import Logging
import Supervisor
import SyscallDecoding
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

extension TraceFormat: ExpressibleByArgument {}

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
        let options = TraceSession.Options(
            command: command, environment: currentEnvironment(), logSink: sink, closesLogSink: ownsSink,
            logFormat: logFormat, routeSendmsg: !noTraceSendmsg)
        let status: Int32
        do {
            status = try TraceSession(options: options, logger: logger).run()
        } catch {
            logger.error("\(error.message)")
            throw ExitCode(error.exitStatus)
        }
        throw ExitCode(status)
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
