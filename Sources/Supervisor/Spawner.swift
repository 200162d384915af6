import CSysmirror
import LinuxSystem
import SystemPackage
import UserNotification

#if canImport(Glibc)
    import Glibc
#endif

/// The signal state sysmirror started with, which the program inherits as a shell would give it.
public struct InheritedSignals: @unchecked Sendable {  // sigset_t is plain bits, copied by value
    var ignored = sigset_t()
    var mask = sigset_t()

    /// Reads the current dispositions and mask. Call before sysmirror changes either.
    public static func capture() -> InheritedSignals {
        var state = InheritedSignals()
        sigemptyset(&state.ignored)
        _ = pthread_sigmask(SIG_SETMASK, nil, &state.mask)  // only reads the mask: cannot fail
        for signal: Int32 in 1...64 {
            var action = sigaction()
            if sigaction(signal, nil, &action) == 0, unsafeBitCast(action.__sigaction_handler, to: Int.self) == 1 {
                sigaddset(&state.ignored, signal)  // SIG_IGN
            }
        }
        return state
    }
}

/// The step of starting the program that failed.
public enum SpawnStage: Int32, Sendable {
    case signals = 1, noNewPrivileges, seccomp, handover, exec

    init(_ raw: Int32) { self = SpawnStage(rawValue: raw) ?? .exec }
}

/// Starting the program failed at `stage` with `errno`.
public struct SpawnError: Error, Equatable {
    public let stage: SpawnStage
    public let errno: Errno
}

/// A program running under the filter, with the supervisor's listener.
public struct SpawnedProgram: Sendable {
    public let pid: Int32
    public let listener: NotificationListener
    /// SECCOMP_FILTER_FLAG_* the kernel accepted (WAIT_KILLABLE_RECV is dropped before 5.19).
    public let filterFlags: UInt32

    public var waitsKillably: Bool { filterFlags & UInt32(SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV) != 0 }
}

/// Forks the program under the filter (design.md, "Spawn"). The child reports its listener's number; the
/// parent takes the listener with pidfd_getfd, runs `prepare` (start serving), and only then lets the child
/// exec: execve is routed, so it must find somebody listening.
public enum Spawner {
    /// - Parameters:
    ///   - path: the resolved executable, or nil for a probe child that exits after the handover.
    ///   - prepare: runs while the child waits before exec; when it throws, the child is killed.
    public static func spawn(
        path: String?, arguments: [String], environment: [String], filter: FilterProgram,
        signals: InheritedSignals, allowsAnyTracer: Bool = false, prepare: (SpawnedProgram) throws -> Void
    ) throws -> SpawnedProgram {
        var channel: [Int32] = [-1, -1]
        _ = try systemCall("socketpair") {
            socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &channel)
        }
        let parentEnd = FileDescriptor(rawValue: channel[0])
        defer { try? parentEnd.close() }

        let pid = try withCStrings(arguments) { argv in
            try withCStrings(environment) { envp in
                try filter.instructions.withUnsafeBufferPointer { instructions in
                    try withUnsafePointer(to: signals.ignored) { ignored in
                        try withUnsafePointer(to: signals.mask) { mask in
                            try path.withOptionalCString { cPath in
                                var request = sysm_spawn_request(
                                    path: cPath, argv: argv, envp: envp, filter: instructions.baseAddress,
                                    filter_length: UInt16(instructions.count),
                                    filter_flags: UInt32(SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV),
                                    channel: channel[1], parent_channel: channel[0], ignored: ignored, mask: mask,
                                    allow_any_tracer: allowsAnyTracer ? 1 : 0)
                                return try systemCall("fork") { sysm_spawn(&request) }
                            }
                        }
                    }
                }
            }
        }
        _ = close(channel[1])  // the child's end, which the parent must not hold: a close cannot fail to release it

        do {
            guard let report = try readReport(parentEnd) else { throw SpawnError(stage: .handover, errno: .brokenPipe) }
            guard report.kind == SYSM_REPORT_LISTENER else {
                throw SpawnError(stage: SpawnStage(report.detail), errno: Errno(rawValue: report.value))
            }
            let listener = try takeListener(pid: pid, number: report.value)
            let program = SpawnedProgram(pid: pid, listener: listener, filterFlags: UInt32(bitPattern: report.detail))
            try prepare(program)
            _ = try parentEnd.writeAll([1])
            // The channel closes on exec; a report instead means exec failed.
            if let failure = try readReport(parentEnd) {
                throw SpawnError(stage: SpawnStage(failure.detail), errno: Errno(rawValue: failure.value))
            }
            return program
        } catch {
            // The child may be gone already (ESRCH), which is what this wants; the wait only reaps it.
            _ = kill(pid, SIGKILL)
            var status: Int32 = 0
            _ = waitpid(pid, &status, 0)
            throw error
        }
    }

    static func takeListener(pid: Int32, number: Int32) throws -> NotificationListener {
        let pidfd = try systemCall("pidfd_open") { sysm_pidfd_open(pid, 0) }
        defer { close(pidfd) }
        let fd = try systemCall("pidfd_getfd") { sysm_pidfd_getfd(pidfd, number, 0) }
        return NotificationListener(descriptor: FileDescriptor(rawValue: fd))
    }

    /// One report, or nil at end of file.
    static func readReport(_ channel: FileDescriptor) throws -> sysm_child_report? {
        var report = sysm_child_report()
        let size = MemoryLayout<sysm_child_report>.size
        let count = try withUnsafeMutableBytes(of: &report) { buffer in
            var total = 0
            while total < size {
                let n = try channel.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[total...]))
                if n == 0 { break }
                total += n
            }
            return total
        }
        guard count == size else { return nil }
        return report
    }

    static func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) throws -> R)
        rethrows -> R
    {
        let pointers = strings.map { strdup($0) } + [nil]
        defer { pointers.forEach { free($0) } }
        return try pointers.withUnsafeBufferPointer { try body($0.baseAddress!) }
    }
}

extension Optional where Wrapped == String {
    func withOptionalCString<R>(_ body: (UnsafePointer<CChar>?) throws -> R) rethrows -> R {
        switch self {
        case .some(let string): try string.withCString(body)
        case .none: try body(nil)
        }
    }
}
