import CSysmirror
import Synchronization
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// A program sysmirror runs on the user's behalf (kubectl), tied to sysmirror's life: it has a process
/// group of its own (the terminal's Ctrl-C is sysmirror's to handle) and receives SIGTERM when the thread
/// that started it ends, however sysmirror ends. Start helpers from the main thread.
public final class HelperProcess: @unchecked Sendable {  // pid set once; `status` only from the owner
    public let pid: pid_t
    /// The read ends of its standard output and error.
    public let output: FileDescriptor
    public let errors: FileDescriptor
    private var status: Int32?

    /// What a helper that ran to its end printed, and how it ended.
    public struct Completion: Sendable {
        /// The exit status, or 128+N when signal N ended it.
        public var status: Int32
        public var output: [UInt8]
        public var errors: [UInt8]
    }

    /// Why a helper could not be run to its end.
    public enum Failure: Error, Equatable, Sendable {
        /// No executable by that name on PATH, or exec failed (ENOENT, EACCES, ...).
        case cannotRun(path: String, Errno)
        case timedOut
        /// `shouldStop` said so (the user pressed Ctrl-C, for example).
        case stopped
        case system(SystemCallError)
    }

    /// Starts `path` with `arguments` (argv[0] first); `input` becomes its stdin (/dev/null when nil).
    public init(path: String, arguments: [String], environment: [String], input: FileDescriptor? = nil)
        throws(Failure)
    {
        func pipe() throws(Failure) -> (read: Int32, write: Int32) {
            var ends: [Int32] = [-1, -1]
            guard sysm_pipe(&ends) == 0 else { throw .system(SystemCallError("pipe2", currentErrno())) }
            return (ends[0], ends[1])
        }
        let stdout = try pipe()
        let stderr = try pipe()
        let report = try pipe()
        let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer {
            for fd in [stdout.write, stderr.write, report.write, null] where fd >= 0 { close(fd) }
        }
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup($0) } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        let pid = HelperStatuses.spawning {
            path.withCString { path in
                argv.withUnsafeBufferPointer { argv in
                    envp.withUnsafeBufferPointer { envp in
                        var request = sysm_helper_request(
                            path: path, argv: argv.baseAddress, envp: envp.baseAddress,
                            fds: (input?.rawValue ?? null, stdout.write, stderr.write), report: report.write,
                            parent: getpid())
                        return sysm_spawn_helper(&request)
                    }
                }
            }
        }
        guard pid > 0 else {
            for fd in [stdout.read, stderr.read, report.read] { close(fd) }
            throw .system(SystemCallError("fork", currentErrno()))
        }
        close(report.write)
        var error: Int32 = 0
        let reported = read(report.read, &error, MemoryLayout<Int32>.size)
        close(report.read)
        self.pid = pid
        output = FileDescriptor(rawValue: stdout.read)
        errors = FileDescriptor(rawValue: stderr.read)
        if reported == MemoryLayout<Int32>.size {
            _ = wait()
            throw .cannotRun(path: path, Errno(rawValue: error))
        }
    }

    deinit {
        try? output.close()
        try? errors.close()
    }

    /// Runs a helper to its end, with `input` on its standard input, collecting both outputs. `shouldStop` is
    /// asked every 100 ms; the helper is killed when it says so or when `timeout` passes.
    public static func run(
        path: String, arguments: [String], environment: [String], input: [UInt8]? = nil,
        timeout: Duration? = nil, shouldStop: () -> Bool = { false }
    ) throws(Failure) -> Completion {
        let stdin = try input.map { bytes throws(Failure) in try memoryFile(bytes) }
        defer { try? stdin?.close() }
        let helper = try HelperProcess(path: path, arguments: arguments, environment: environment, input: stdin)
        let deadline = timeout.map { ContinuousClock.now + $0 }
        var output: [UInt8] = []
        var errors: [UInt8] = []
        let ended = helper.readOutputs(
            checkingEvery: 100, until: { shouldStop() || deadline.map { ContinuousClock.now > $0 } == true }
        ) { fromErrors, bytes in
            if fromErrors { errors += bytes } else { output += bytes }
        }
        guard ended else {
            helper.terminate(SIGKILL)
            _ = helper.wait()
            throw shouldStop() ? .stopped : .timedOut
        }
        return Completion(status: helper.wait(), output: output, errors: errors)
    }

    /// `bytes` in a memfd, read from its start: a helper's standard input, however large.
    static func memoryFile(_ bytes: [UInt8]) throws(Failure) -> FileDescriptor {
        let fd = sysm_memfd("sysmirror-helper-input")
        guard fd >= 0 else { throw .system(SystemCallError("memfd_create", currentErrno())) }
        let descriptor = FileDescriptor(rawValue: fd)
        do {
            _ = try descriptor.writeAll(bytes)
            _ = try descriptor.seek(offset: 0, from: .start)
        } catch {
            try? descriptor.close()
            throw .system(SystemCallError("write(memfd)", error as? Errno ?? .ioError))
        }
        return descriptor
    }

    /// Reads standard output and error as they come until both end (true), or until `stop` says so (false;
    /// asked every `milliseconds`, or never when -1). `received` hears each piece and where it came from.
    func readOutputs(
        checkingEvery milliseconds: Int32 = -1, until stop: () -> Bool = { false },
        _ received: (_ fromErrors: Bool, _ bytes: ArraySlice<UInt8>) -> Void
    ) -> Bool {
        var open = [output.rawValue, errors.rawValue]
        var buffer = [UInt8](repeating: 0, count: 65536)
        while !open.isEmpty {
            if stop() { return false }
            var fds = open.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            guard poll(&fds, nfds_t(fds.count), milliseconds) > 0 else { continue }
            for entry in fds where entry.revents != 0 {
                let count = read(entry.fd, &buffer, buffer.count)
                if count > 0 {
                    received(entry.fd == errors.rawValue, buffer[..<count])
                } else if count == 0 || currentErrno() != .interrupted {
                    open.removeAll { $0 == entry.fd }
                }
            }
        }
        return true
    }

    /// Reads standard output up to and including the next newline; nil at its end or after `timeout`.
    /// Bytes after the newline are kept for the next call.
    public func readLine(timeout: Duration, shouldStop: () -> Bool = { false }) -> String? {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let end = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: pending[..<end], as: UTF8.self)
                pending.removeSubrange(...end)
                return line
            }
            guard ContinuousClock.now < deadline, !shouldStop() else { return nil }
            var entry = pollfd(fd: output.rawValue, events: Int16(POLLIN), revents: 0)
            guard poll(&entry, 1, 100) > 0 else { continue }
            var buffer = [UInt8](repeating: 0, count: 4096)
            let count = read(output.rawValue, &buffer, buffer.count)
            if count == 0 || (count < 0 && currentErrno() != .interrupted) { return nil }
            if count > 0 { pending += buffer[..<count] }
        }
    }
    private var pending: [UInt8] = []

    /// On the calling thread, reads the helper's output and errors as they come until both end (the helper
    /// exited), so that a long-running helper never blocks on a full pipe (kubectl port-forward prints a line
    /// per connection); the last 4 KiB of its errors.
    public func readToEnd() -> String {
        var tail: [UInt8] = []
        _ = readOutputs { fromErrors, bytes in
            if fromErrors { tail = Array((tail + bytes).suffix(4096)) }
        }
        return String(decoding: tail, as: UTF8.self)
    }

    /// Whatever the helper has written to standard error so far (without waiting for more).
    public func availableErrors() -> [UInt8] {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        var entry = pollfd(fd: errors.rawValue, events: Int16(POLLIN), revents: 0)
        while poll(&entry, 1, 0) > 0, entry.revents & Int16(POLLIN) != 0 {
            let count = read(errors.rawValue, &buffer, buffer.count)
            guard count > 0 else { break }
            bytes += buffer[..<count]
        }
        return bytes
    }

    public func terminate(_ signal: Int32 = SIGTERM) {
        if status == nil { kill(pid, signal) }
    }

    /// Whether it has ended (reaped without waiting).
    public var hasExited: Bool {
        if status != nil { return true }
        var raw: Int32 = 0
        switch waitpid(pid, &raw, WNOHANG) {
        case pid: status = HelperStatuses.waited(pid, raw)
        case 0: return false
        default: status = HelperStatuses.take(pid)  // reaped by the session's reaper: known once it says so
        }
        return status != nil
    }

    /// Waits for it to end; its exit status, or 128+N when signal N ended it.
    @discardableResult
    public func wait() -> Int32 {
        if let status { return status }
        var raw: Int32 = 0
        var result: Int32
        repeat { result = waitpid(pid, &raw, 0) } while result < 0 && currentErrno() == .interrupted
        let decoded = result == pid ? HelperStatuses.waited(pid, raw) : HelperStatuses.awaitReaped(pid)
        status = decoded
        return decoded
    }
}

/// The exit statuses of helpers that the session's reaper (`waitpid(-1)`, as a subreaper must) reaped
/// before their owner waited: each child is reaped once, and its owner still learns how it ended.
public enum HelperStatuses {
    /// Helpers not waited for yet, by pid: their raw wait status once the reaper took them.
    private static let helpers = Mutex<[pid_t: Int32?]>([:])

    /// Spawns a helper under the lock, so that a reaper that reaps its pid finds it registered.
    static func spawning(_ spawn: () -> pid_t) -> pid_t {
        helpers.withLock { helpers in
            let pid = spawn()
            if pid > 0 { helpers[pid] = .some(nil) }
            return pid
        }
    }

    /// For the session's reaper: `pid` ended with `status`; true when it is a helper's, kept for its owner.
    public static func reaped(_ pid: pid_t, status: Int32) -> Bool {
        helpers.withLock { helpers in
            guard helpers[pid] != nil else { return false }
            helpers[pid] = .some(status)
            return true
        }
    }

    /// The owner reaped it itself.
    static func waited(_ pid: pid_t, _ status: Int32) -> Int32 {
        _ = helpers.withLock { $0.removeValue(forKey: pid) }
        return shellExitStatus(status)
    }

    /// Its status if the reaper took it and said so; nil otherwise.
    static func take(_ pid: pid_t) -> Int32? {
        helpers.withLock { helpers in
            guard case .some(.some(let status)) = helpers[pid] else { return nil }
            helpers[pid] = nil
            return shellExitStatus(status)
        }
    }

    /// Once waitpid said it is gone: the reaper records it right after its own waitpid returns.
    static func awaitReaped(_ pid: pid_t) -> Int32 {
        for _ in 0..<1000 {
            if let status = take(pid) { return status }
            usleep(1_000)
        }
        return -1  // reaped by someone who did not say: unknown
    }
}

/// A wait status as a shell reports it: the exit code, or 128+N when signal N ended the process.
public func shellExitStatus(_ waitStatus: Int32) -> Int32 {
    let signal = waitStatus & 0x7f
    return signal == 0 ? (waitStatus >> 8) & 0xff : 128 + signal
}
