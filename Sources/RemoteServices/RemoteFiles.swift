import AgentLink
import AgentProtocol
import CSysmirror
import LinuxSystem
import Logging
import Routing
import Synchronization
import SyscallDecoding
import UserNotification

#if canImport(Glibc)
    import Glibc
#endif

/// Serves the file calls the rules send to the pod. Each call becomes one request to the agent; its answer
/// arrives on the link's thread, which answers the program, so the receiving thread never waits.
///
/// Results reach the program as kernel objects, so that what follows runs natively: an open gets a file
/// holding the content (`ContentFile`) or a placeholder directory (`RemoteDirectories`), a stat gets its
/// structure written into the program's buffer.
/// Writes one event to the trace log (`TraceLog.record`): the services log what happens after a call's
/// answer (a relayed connection's end) through it.
package typealias RecordEvent = @Sendable (TraceEvent) -> Void

package final class RemoteFiles: Sendable {
    let listener: NotificationListener
    /// The pod's hostname, fetched once at start.
    let hostname: [UInt8]
    let logger: Logger
    /// What the opens it starts need: they call into it, never back into RemoteFiles.
    let context: OpenContext
    var client: AgentClient { context.client }
    var directories: RemoteDirectories { context.directories }

    package init(
        client: AgentClient, listener: NotificationListener, directories: RemoteDirectories, hostname: [UInt8],
        cache: FileCache? = nil, loop: EventLoop, logger: Logger
    ) throws(SystemCallError) {
        context = OpenContext(
            client: client, directories: directories,
            writes: try PendingWrites(client: client, cache: cache, loop: loop, logger: logger), cache: cache,
            linkWarning: LinkWarning(logger: logger))
        self.listener = listener
        self.hostname = hostname
        self.logger = logger
    }

    // MARK: Paths

    /// The call's path made absolute: against the caller's cwd or directory fd, read from /proc for this
    /// call, and translated back to the pod's path when it runs through a placeholder directory. Nil when
    /// the base is not a directory path (a socket fd, a deleted cwd): the call then runs locally.
    package func absolutePath(of call: FileCall, pid: Int32) -> [UInt8]? {
        if !call.isRelative { return directories.remotePath(for: call.path) ?? call.path }
        guard !call.path.isEmpty else { return nil }
        let link =
            call.directory == FileCall.currentDirectory ? "/proc/\(pid)/cwd" : "/proc/\(pid)/fd/\(call.directory)"
        var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX))
        guard let count = try? systemCall("readlink", { readlink(link, &buffer, buffer.count) }), count > 0,
            buffer[0] == UInt8(ascii: "/")
        else { return nil }
        // A placeholder base is translated first, so that `..` from it climbs in the pod, not in /tmp.
        let base = Array(buffer[..<count])
        return PathNormalizer.absolute(call.path, base: directories.remotePath(for: base) ?? base)
    }

    // MARK: Serving

    /// Serves one call routed remote; `done` is called exactly once, after the program has its answer.
    package func serve(
        _ notification: Notification, call: DecodedSyscall?, file: FileCall?, path: [UInt8]?,
        done: @escaping PendingCall.Completion
    ) {
        let answer = PendingCall(notification: notification, listener: listener, logger: logger, done: done)
        guard let file, let path else {
            if call?.spec.service == .hostname {
                serveUname(answer, buffer: notification.arguments[0])
            } else {
                answer.fail(ENOSYS, note: "not served remotely")
            }
            return
        }
        context.writes.afterClosedUploads(to: path) { [self] in
            serve(file.operation, path: path, isWriting: file.isWriting, answer)
        }
    }

    func serve(_ operation: FileOperation, path: [UInt8], isWriting: Bool, _ answer: PendingCall) {
        let cache = context.cache
        // A write through sysmirror makes what was kept of the path stale (the agent's own word may come later).
        if isWriting { cache?.forget(path) }
        switch operation {
        case .open(let flags, _) where path == RoutingPolicy.hostnameFile:
            install(Array(hostname) + [UInt8(ascii: "\n")], flags: flags, name: path, answer)
        case .open(let flags, let mode):
            switch OpenIntent(flags: flags) {
            case .read: openForReading(path, flags: flags, mode: mode, answer)
            case .stream: openForWriting(path, flags: flags, mode: mode, answer)
            case .readWrite: openForReading(path, flags: flags, mode: mode, answer)
            }
        case .stat(let follow, let buffer, let layout):
            let write: @Sendable (FileMetadata) -> Void = { metadata in
                let bytes = layout == .statx ? KernelStructures.statx(metadata) : KernelStructures.stat(metadata)
                answer.write(bytes, at: buffer, result: 0)
            }
            status(path, following: follow, answer) { metadata in write(metadata) }
        case .access(let mode):
            if let kept = cache?.access(path, mode: mode) {
                answer.markCached()
                return kept == 0 ? answer.succeed(0) : answer.fail(kept)
            }
            let ticket = cache?.ticket()
            client.send(.access(path: path, mode: mode)) { reply in
                if case .response(let response) = reply { cache?.keepAccess(path, mode: mode, response, ticket) }
                return answer.expect(reply) { response in
                    guard case .done = response else { return answer.unexpected(response) }
                    answer.succeed(0)
                }
            }
        case .extendedAttributes(let follow, let list):
            status(path, following: follow, answer) { _ in
                if list { answer.succeed(0) } else { answer.fail(ENODATA) }
            }
        case .readlink(let buffer, let size):
            guard size > 0 else { return answer.fail(EINVAL) }
            let write: @Sendable ([UInt8]) -> Void = { target in
                let shown = Array(target.prefix(size))
                answer.write(shown, at: buffer, result: Int64(shown.count))
            }
            if let kept = cache?.link(path) {
                answer.markCached()
                return write(kept)
            }
            let ticket = cache?.ticket()
            client.send(.readlink(path: path)) { reply in
                return answer.expect(reply) { response in
                    guard case .text(let target) = response else { return answer.unexpected(response) }
                    cache?.keepLink(path, target, ticket)
                    write(target)
                }
            }
        }
    }

    /// stat's metadata for `found`, from the cache or the agent; a missing path fails with its errno.
    private func status(
        _ path: [UInt8], following: Bool, _ answer: PendingCall, _ found: @escaping @Sendable (FileMetadata) -> Void
    ) {
        let cache = context.cache
        if let kept = cache?.status(path, following: following) {
            answer.markCached()
            switch kept {
            case .metadata(let metadata): return found(metadata)
            case .missing(let errno): return answer.fail(errno)
            }
        }
        let ticket = cache?.ticket()
        client.send(.stat(path: path, followSymlinks: following)) { reply in
            if case .response(let response) = reply { cache?.keepStatus(path, following: following, response, ticket) }
            return answer.expect(reply) { response in
                guard case .metadata(let metadata) = response else { return answer.unexpected(response) }
                found(metadata)
            }
        }
    }

    /// uname with the pod's hostname as nodename; the rest is this machine's.
    func serveUname(_ answer: PendingCall, buffer: UInt64) {
        var names = utsname()
        _ = uname(&names)  // fails only for a bad buffer, and this one is ours
        let local = withUnsafeBytes(of: &names) { Array($0) }
        answer.write(KernelStructures.utsname(local, nodename: hostname), at: buffer, result: 0)
    }

    /// A read, or a read-write open whose copy is written back at close (`OpenIntent`): the agent streams the
    /// content either way. The request's id reaches its owner before any reply can (`prepare`).
    func openForReading(_ path: [UInt8], flags: Int32, mode: UInt32, _ answer: PendingCall) {
        // O_NOFOLLOW's ELOOP on a symlink is the agent's to say.
        let keepable = OpenIntent(flags: flags) == .read && flags & O_NOFOLLOW == 0
        switch keepable ? context.cache?.forReadOpen(path, directoryOnly: flags & O_DIRECTORY != 0) : nil {
        case .content(let content)?:
            guard let opened = content.open() else { break }  // cannot reopen it: downloaded again
            answer.markCached()
            answer.install(fd: opened, flags: flags)
            return
        case .missing(let errno)?:
            answer.markCached()
            return answer.fail(errno)
        case .entries(let entries)?:
            answer.markCached()
            switch context.directories.open(path, entries: entries) {
            case .success(let fd): answer.install(fd: fd, flags: flags)
            case .failure(let errno):
                answer.fail(errno.rawValue, note: "could not make the placeholder directory: \(errno)")
            }
            return
        case nil:
            break
        }
        let download = Download(path: path, flags: flags, answer: answer, context: context)
        if keepable { download.ticket = context.cache?.ticket() }
        client.send(.open(path: path, flags: flags, mode: mode), prepare: { download.id = $0 }) { download.receive($0) }
    }

    /// Gives the program a file holding `content`, opened with its access mode.
    func install(_ content: [UInt8], flags: Int32, name: [UInt8], _ answer: PendingCall) {
        do {
            let file = try ContentFile(name: name, size: UInt64(content.count), scratch: context.scratch)
            do {
                try file.append(content)
            } catch {
                file.close()
                throw error
            }
            answer.install(content: file, flags: flags)
        } catch let error as SystemCallError {
            answer.fail(error.errno.rawValue, note: "\(error)")
        } catch {
            answer.fail(EIO, note: "\(error)")
        }
    }

    /// `--fs-mode write`: the program writes into a pipe; its bytes stream to the file opened in the pod.
    func openForWriting(_ path: [UInt8], flags: Int32, mode: UInt32, _ answer: PendingCall) {
        let upload = Upload(path: path, flags: flags, answer: answer, context: context)
        context.writes.track(upload)
        client.send(.open(path: path, flags: flags, mode: mode), prepare: { upload.id = $0 }) { upload.receive($0) }
    }

    /// Waits (up to `seconds`) for uploads to reach the pod once the program is gone.
    package func drain(seconds: Int) { context.writes.drain(seconds: seconds) }
}

/// Counts down from a number, shared by threads; true for the tick that reaches zero.
final class Countdown: Sendable {
    private let value: Atomic<Int>
    init(_ count: Int) { value = Atomic(count) }
    func tick() -> Bool { value.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 }
}

/// A call waiting for its answer, answered exactly once from whichever thread has the result: a second
/// answer is refused and logged (it would be a bug, and the kernel would answer it ENOENT at best, or
/// answer a recycled id).
package final class PendingCall: Sendable {
    /// How a served call ended, for the log, and when it was answered (taken before the answer: the program
    /// may run on this CPU as soon as it has it).
    package typealias Completion =
        @Sendable (_ outcome: Outcome, _ route: Route, _ note: String?, _ answered: UInt64) -> Void

    let notification: Notification
    let listener: NotificationListener
    let done: PendingCall.Completion
    private let answered = Atomic<Bool>(false)
    private let fromCache = Atomic<Bool>(false)
    private let logger: Logger

    /// The answer comes from the file cache: the log says `cached`.
    func markCached() { fromCache.store(true, ordering: .relaxed) }
    private var route: Route { fromCache.load(ordering: .relaxed) ? .cached : .remote }

    init(
        notification: Notification, listener: NotificationListener, logger: Logger,
        done: @escaping PendingCall.Completion
    ) {
        self.notification = notification
        self.listener = listener
        self.logger = logger
        self.done = done
    }

    /// Takes the one answer; false (and logged) when it was given already.
    private func claim(_ how: String) -> Bool {
        guard answered.exchange(true, ordering: .acquiringAndReleasing) else { return true }
        logger.error(
            "internal error: a second answer (\(how)) to call \(notification.id) of pid \(notification.pid) was refused"
        )
        return false
    }

    func succeed(_ value: Int64, note: String? = nil) {
        guard claim("success") else { return }
        respond(.returned(value), note: note) { () throws(SystemCallError) in
            try listener.succeed(notification.id, value: value)
        }
    }

    func fail(_ errno: Int32, note: String? = nil) {
        guard claim("failure") else { return }
        respondFailure(errno, note: note)
    }

    private func respondFailure(_ errno: Int32, note: String?) {
        respond(.failed(errno: errno), note: note) { () throws(SystemCallError) in
            try listener.fail(notification.id, errno: errno)
        }
    }

    /// Lets the kernel run the call (on what sysmirror put in place).
    func proceed(note: String? = nil) {
        guard claim("continue") else { return }
        respond(.continued, note: note) { () throws(SystemCallError) in try listener.continueCall(notification.id) }
    }

    private func respond(_ outcome: Outcome, note: String?, _ send: () throws(SystemCallError) -> Void) {
        let answered = Clock.monotonic()
        do {
            try send()
            done(outcome, route, note, answered)
        } catch {
            done(.interrupted, route, note, answered)
        }
    }

    /// The call went away before it could be answered.
    func gone(_ note: String? = nil) {
        guard claim("gone") else { return }
        done(.interrupted, route, note, Clock.monotonic())
    }

    /// Writes a result into the program's buffer, then answers `result`; the call is checked first, since it
    /// may be long gone and its pid reused.
    func write(_ bytes: [UInt8], at address: UInt64, result: Int64) {
        guard listener.isPending(notification.id) else { return gone() }
        let errno = ProcessMemory(pid: notification.pid).write(bytes, at: address)
        if errno == 0 { succeed(result) } else { fail(errno) }
    }

    /// Installs the content file reopened with the caller's access mode (not its own read-write one), and
    /// answers with its number.
    func install(content: ContentFile, flags: Int32, note: String? = nil) {
        defer { content.close() }
        do {
            try content.flush()
        } catch {
            return fail(error.errno.rawValue, note: "could not hold the file's content: \(error)")
        }
        let reopened: OwnedDescriptor
        do throws(SystemCallError) {
            reopened = try content.reopen(O_RDONLY)
        } catch {
            return fail(EIO, note: "could not reopen the content file: \(error)")
        }
        install(fd: reopened, flags: flags, note: note)
    }

    /// Installs `fd` into the program as the call's result (the program gets its own copy; this one closes
    /// here); the number the program got, or nil when the call failed or went away.
    @discardableResult
    func install(fd: consuming OwnedDescriptor, flags: Int32, note: String? = nil) -> Int32? {
        guard claim("a descriptor") else { return nil }
        let answered = Clock.monotonic()
        do {
            let number = try listener.answer(
                notification.id, installing: fd.raw, closeOnExec: flags & O_CLOEXEC != 0, caller: notification.pid)
            done(.returned(Int64(number)), route, note, answered)
            return number
        } catch let error where error.errno == .noSuchFileOrDirectory {
            done(.interrupted, route, note, answered)
        } catch {
            respondFailure(error.errno.rawValue, note: "\(error)")
        }
        return nil
    }

    /// Installs a writable `fd` whose last close matters (a pipe's write end, a copy to write back): sysmirror
    /// drops its own reference before the program runs, so that the program's close is the last one and
    /// its effect (POLLHUP, IN_CLOSE_WRITE) is there before the program's next call. This gives up
    /// SECCOMP_ADDFD_FLAG_SEND: if the call is interrupted in between, the program keeps a descriptor it
    /// does not know of, closed when it exits.
    func installWritable(fd: consuming OwnedDescriptor, flags: Int32, note: String) {
        let number: Int32
        do throws(SystemCallError) {
            number = try listener.install(notification.id, fd.raw, closeOnExec: flags & O_CLOEXEC != 0)
        } catch {
            fd.close()
            return error.errno == .noSuchFileOrDirectory ? gone(note) : fail(error.errno.rawValue, note: "\(error)")
        }
        fd.close()
        succeed(Int64(number), note: note)
    }

    /// Hands a single-response reply to `body`; failures and link trouble are answered here.
    func expect(_ reply: Reply, _ body: (Response) -> Void) -> ReplyDisposition {
        switch reply {
        case .response(.failure(let errno, let message)):
            fail(errno, note: message.isEmpty ? nil : message)
        case .response(let response):
            body(response)
        case .chunk, .end:
            fail(EIO, note: "the agent sent a stream where none was expected")
        case .linkFailure(let reason):
            linkFailed(reason)
        }
        return .complete
    }

    func unexpected(_ response: Response) {
        fail(EIO, note: "unexpected answer from the agent: \(response)")
    }

    func linkFailed(_ reason: String, warning: LinkWarning? = nil) {
        warning?.warn(reason)
        fail(EIO, note: reason)
    }
}

/// A remote file's content, being filled, then handed to the program.
///
/// Small files go into a memfd: they never touch the local disk (service-account tokens, configs). Large
/// files go into an unlinked O_TMPFILE in the session's scratch folder: on a disk file system its page
/// cache uses large folios, and reads run as fast as a local file's, where a memfd's 4 KiB shmem pages
/// read at a third of that speed or less (docs/benchmarks.md).
final class ContentFile: @unchecked Sendable {  // owned by one thread at a time (the link's)
    /// Nil once closed.
    private var descriptor: OwnedDescriptor?
    /// Files from this size up go to the scratch folder.
    static let largeFile: UInt64 = 1 << 20
    /// Large files are written in pieces of this size rather than the 256 KiB chunks they arrive in: the
    /// page cache then holds them in larger folios, which read about 10% faster.
    static let writeSize = 1 << 20
    private var pending: [UInt8] = []

    /// - Parameters:
    ///   - name: the pod path; its last component names the memfd, for readers of /proc/PID/fd.
    ///   - size: the size the agent announced; the content may differ if the file changes meanwhile.
    ///   - scratch: a folder for large files.
    init(name: [UInt8], size: UInt64, scratch: String) throws(SystemCallError) {
        if size >= Self.largeFile,
            let file = try? systemCall(
                "open(O_TMPFILE)", { open(scratch, GNU.temporaryFile | O_RDWR | O_CLOEXEC, 0o600) })
        {
            descriptor = OwnedDescriptor(taking: file)
            pending.reserveCapacity(Self.writeSize)
            return
        }
        let base = name.split(separator: UInt8(ascii: "/")).last.map { String(decoding: $0, as: UTF8.self) } ?? "file"
        descriptor = OwnedDescriptor(
            taking: try systemCall("memfd_create") { sysm_memfd("sysmirror:" + String(base.prefix(200))) })
    }

    private var raw: Int32 { descriptor?.raw ?? -1 }

    func append(_ bytes: [UInt8]) throws(SystemCallError) {
        guard pending.capacity >= Self.writeSize else { return try write(bytes) }
        pending.append(contentsOf: bytes)
        if pending.count >= Self.writeSize { try flush() }
    }

    /// Writes what is buffered; called before the file is handed over.
    func flush() throws(SystemCallError) {
        guard !pending.isEmpty else { return }
        try write(pending)
        pending.removeAll(keepingCapacity: true)
    }

    /// `flush`, then the pod file's permission bits (and the owner's read, which each reopen needs) and times,
    /// so that fstat of a program's descriptor shows them rather than a memfd's 0777 and the download's time:
    /// OpenSSH, for one, refuses a key whose fstat shows access for others.
    func flush(matching pod: FileMetadata) throws(SystemCallError) {
        try flush()
        try descriptor?.setPermissions(mode_t(pod.mode & 0o777) | S_IRUSR)
        let time = { (time: FileMetadata.Time) in timespec(tv_sec: Int(time.seconds), tv_nsec: Int(time.nanoseconds)) }
        try descriptor?.setTimes(accessed: time(pod.accessed), modified: time(pod.modified))
    }

    private func write(_ bytes: [UInt8]) throws(SystemCallError) {
        var done = 0
        while done < bytes.count {
            done += try systemCall("write(content)") {
                bytes.withUnsafeBytes { Glibc.write(raw, $0.baseAddress! + done, $0.count - done) }
            }
        }
    }

    /// A new open of the content with `flags`' access mode: its own offset, and only the access the program
    /// asked for.
    func reopen(_ flags: Int32) throws(SystemCallError) -> OwnedDescriptor {
        guard let reopened = try descriptor?.reopen(flags) else {
            throw SystemCallError("open(content)", .badFileDescriptor)
        }
        return reopened
    }

    /// Lets go of sysmirror's own descriptor (the program's opens keep the content).
    func close() { descriptor = nil }
}
