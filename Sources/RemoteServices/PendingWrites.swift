import AgentLink
import LinuxSystem
import Logging
import Synchronization
import UserNotification

#if canImport(Glibc)
    import Glibc
#endif

/// What a remote open needs besides its call: the link, where content and placeholders go, the session's
/// writes. RemoteFiles gives it to each open; nothing in it calls
/// RemoteFiles back.
struct OpenContext: Sendable {
    let client: AgentClient
    let directories: RemoteDirectories
    let writes: PendingWrites
    /// What the session keeps of the pod's answers; nil with `--fs-cache off`.
    let cache: FileCache?
    let linkWarning: LinkWarning

    /// Where large files' contents go (see `ContentFile`).
    var scratch: String { String(decoding: directories.root, as: UTF8.self) }
}

/// The first link failure is worth a line on the terminal; the log has every call it failed.
final class LinkWarning: Sendable {
    private let warned = Atomic<Bool>(false)
    private let logger: Logger

    init(logger: Logger) { self.logger = logger }

    func warn(_ reason: String) {
        guard !warned.exchange(true, ordering: .relaxed) else { return }
        logger.error("\(reason); remote file calls now fail with EIO")
    }
}

/// The session's writes to the pod (`--fs-mode write`) until the agent confirms their end: uploads through a
/// pipe and copies written back when the program closes them. Calls on a path wait for the writes the
/// program has finished (close-to-open consistency), and the end of the session waits for all of them.
final class PendingWrites: Sendable {
    let client: AgentClient
    /// Where uploads are pumped and closes watched.
    let loop: EventLoop
    let logger: Logger
    /// By pod path.
    private let writes = Mutex<[[UInt8]: [any PendingWrite]]>([:])
    /// Started with the first file opened to write in place.
    private let closeWatcher = Mutex<CloseWatcher?>(nil)
    /// Writes under way, for the end of the session to wait for.
    private let underWay: ActivityCount

    /// What the session keeps of the pod's answers: a write that ended makes the path's stale.
    let cache: FileCache?

    init(client: AgentClient, cache: FileCache?, loop: EventLoop, logger: Logger) throws(SystemCallError) {
        self.client = client
        self.cache = cache
        self.loop = loop
        self.logger = logger
        underWay = try ActivityCount()
    }

    /// Gives the program its writable copy, and arranges for it to go back to the pod when the program
    /// closes it. sysmirror keeps a read-only descriptor of its own on the copy until then.
    func startWriteBack(_ content: ContentFile, path: [UInt8], flags: Int32, _ answer: PendingCall) {
        let keeper: SharedDescriptor
        let programCopy: OwnedDescriptor
        do throws(SystemCallError) {
            try content.flush()
            keeper = SharedDescriptor(try content.reopen(O_RDONLY))
            programCopy = try content.reopen(flags & (O_ACCMODE | O_APPEND))
        } catch {
            content.close()
            return answer.fail(error.errno.rawValue, note: "could not hold the file's content: \(error)")
        }
        // The copy's own writable descriptor goes before the watch starts, or its close would count.
        content.close()
        let writeBack = WriteBack(path: path, keeper: keeper, writes: self)
        track(writeBack)
        do {
            try closeWatcher.withLock { watcher throws(SystemCallError) in
                if watcher == nil { watcher = try CloseWatcher(loop: loop) }
                try watcher!.watch(writeBack)
            }
        } catch {
            ended(writeBack)
            return answer.fail(error.errno.rawValue, note: "could not watch the copy for its close: \(error)")
        }
        answer.installWritable(fd: programCopy, flags: flags, note: "written back to the pod when closed")
    }

    func track(_ write: any PendingWrite) {
        underWay.begin()
        writes.withLock { $0[write.path, default: []].append(write) }
    }

    /// The write is over (done, failed, or never started); once only for each.
    func ended(_ write: any PendingWrite) {
        let removed = writes.withLock { writes -> Bool in
            guard let index = writes[write.path]?.firstIndex(where: { $0 === write }) else { return false }
            writes[write.path]!.remove(at: index)
            if writes[write.path]!.isEmpty { writes[write.path] = nil }
            return true
        }
        // Before the waiters go on: the agent's own word of the change may come after its `done`.
        cache?.forget(write.path)
        write.finish()
        if removed { underWay.end() }
    }

    /// Close-to-open consistency, as NFS gives: a call on a path whose upload the program has closed (every
    /// writer gone) waits until the pod has the bytes, so the program reads back what it wrote. An upload
    /// still open does not hold anything up: the program may read while it writes.
    func afterClosedUploads(to path: [UInt8], _ body: @escaping @Sendable () -> Void) {
        guard writes.withLock({ $0[path] != nil }) else { return body() }
        closeWatcher.withLock { $0 }?.drain()
        let closed = writes.withLock { $0[path]?.filter(\.writersClosed) ?? [] }
        guard !closed.isEmpty else { return body() }
        let remaining = Countdown(closed.count)
        for upload in closed {
            upload.whenFinished { if remaining.tick() { body() } }
        }
    }

    /// Waits (up to `seconds`) for the writes to reach the pod once the program is gone.
    func drain(seconds: Int) {
        guard !underWay.waitUntilIdle(nanoseconds: UInt64(seconds) * 1_000_000_000) else { return }
        logger.warning("\(underWay.current) file(s) written for the pod did not finish in \(seconds) s")
    }
}
