import AgentLink
import AgentProtocol
import LinuxSystem
import Synchronization
import SyscallDecoding
import SystemPackage
import UserNotification

#if canImport(Glibc)
    import Glibc
#endif

/// A write to the pod still under way: later calls on its path wait for it once the program has closed
/// its end (close-to-open consistency, `PendingWrites.afterClosedUploads`).
protocol PendingWrite: AnyObject, Sendable {
    var path: [UInt8] { get }
    /// Whether the program is done writing: what remains is on its way to the pod.
    var writersClosed: Bool { get }
    func whenFinished(_ body: @escaping @Sendable () -> Void)
    /// The write is over (done, failed, or never started): release what it holds and the waiters.
    func finish()
}

/// Callbacks waiting for something to finish, run once when it does (or at once, if it has).
final class FinishSignal: Sendable {
    private let state = Mutex<(finished: Bool, waiters: [@Sendable () -> Void])>((false, []))

    func whenFinished(_ body: @escaping @Sendable () -> Void) {
        let now = state.withLock { state in
            if !state.finished { state.waiters.append(body) }
            return state.finished
        }
        if now { body() }
    }

    func fire() {
        let waiters = state.withLock { state in
            state.finished = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter() }
    }
}

/// A remote file the program opened to write in place (`OpenIntent.readWrite`): it works on a local copy,
/// and when it closes its descriptor, the copy is written back to the pod in one upload.
final class WriteBack: PendingWrite, @unchecked Sendable {  // `id` is set by `prepare`; the rest is locked
    let path: [UInt8]
    /// sysmirror's own read-only descriptor on the copy: keeps it alive after the program closed its own,
    /// and is where the upload reads from.
    let keeper: SharedDescriptor
    let writes: PendingWrites
    private let closed = Atomic<Bool>(false)
    private let finished = FinishSignal()

    init(path: [UInt8], keeper: SharedDescriptor, writes: PendingWrites) {
        self.path = path
        self.keeper = keeper
        self.writes = writes
    }

    var writersClosed: Bool { closed.load(ordering: .acquiring) }
    func whenFinished(_ body: @escaping @Sendable () -> Void) { finished.whenFinished(body) }

    func finish() { finished.fire() }

    var name: String { String(decoding: path, as: UTF8.self) }

    /// The program closed the copy (the last descriptor on it); noted under the watcher's lock, so that a
    /// call waiting on this path sees it at once.
    func markClosed() { closed.store(true, ordering: .releasing) }

    /// Sends the closed copy to the pod.
    func programClosed() {
        let flags = O_WRONLY | O_TRUNC
        let id = Mutex<UInt32>(0)
        writes.client.send(.open(path: path, flags: flags, mode: 0), prepare: { new in id.withLock { $0 = new } }) {
            [self] reply in
            switch reply {
            case .response(.opened):
                // From the start of the copy, with an offset of its own.
                let requestID = id.withLock { $0 }
                do throws(SystemCallError) {
                    let source = SharedDescriptor(try keeper.descriptor.reopen(O_RDONLY))
                    UploadPump.start(on: writes.loop, source, isPipe: false, id: requestID, client: writes.client)
                    return .waitingOnClient
                } catch {
                    writes.client.cancel(requestID)
                    writes.logger.error("writing back \(name) to the pod failed: \(error)")
                }
            case .response(.done):
                break
            case .response(.failure(let errno, let message)):
                writes.logger.error("writing back \(name) to the pod failed: \(Errno(rawValue: errno)) \(message)")
            case .linkFailure(let reason):
                writes.logger.error("writing back \(name) to the pod failed: \(reason)")
            case .response, .chunk, .end:
                return .waitingOnClient
            }
            writes.ended(self)
            return .complete
        }
    }
}

/// Tells when the program closes its copy of a file opened for writing in place: inotify's IN_CLOSE_WRITE
/// fires when the last descriptor of a writable open file is released, whichever process held it. The
/// inotify descriptor is a registration on the serving event loop.
///
/// The event is queued before the program's close returns, so `drain` on the receiving thread sees it even
/// when the program opens the file again at once, before the loop woke up.
final class CloseWatcher: Sendable {
    let inotify: SharedDescriptor
    private let watched = Mutex<[Int32: WriteBack]>([:])

    init(loop: EventLoop) throws(SystemCallError) {
        inotify = SharedDescriptor(
            OwnedDescriptor(taking: try systemCall("inotify_init1") { inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK)) }))
        loop.execute { [self] in
            // Registered for the session's life: the loop lets it go when it closes.
            _ = try? loop.register(inotify.raw, for: .readable) { [self] _ in drain() }
        }
    }

    /// Watches the copy that `writeBack.keeper` names.
    func watch(_ writeBack: WriteBack) throws(SystemCallError) {
        let watch = try systemCall("inotify_add_watch") {
            inotify_add_watch(inotify.raw, "/proc/self/fd/\(writeBack.keeper.raw)", UInt32(IN_CLOSE_WRITE))
        }
        watched.withLock { $0[watch] = writeBack }
    }

    /// Handles every queued close: each copy closed by the program starts its write-back.
    func drain() {
        let closed = watched.withLock { watched -> [WriteBack] in
            var closed: [WriteBack] = []
            while let buffer = try? Sockets.read(inotify.raw, upTo: 16 << 10), !buffer.isEmpty {
                var offset = 0
                // struct inotify_event: wd, mask, cookie, len, name[len].
                while offset + 16 <= buffer.count {
                    let watch = buffer.loadLittleEndian(Int32.self, at: offset)
                    let mask = buffer.loadLittleEndian(UInt32.self, at: offset + 4)
                    offset += 16 + Int(buffer.loadLittleEndian(UInt32.self, at: offset + 12))
                    guard mask & UInt32(IN_CLOSE_WRITE) != 0, let writeBack = watched.removeValue(forKey: watch) else {
                        continue
                    }
                    // The watch goes with the event's file; a removal that fails found it gone already.
                    _ = inotify_rm_watch(inotify.raw, watch)
                    writeBack.markClosed()
                    closed.append(writeBack)
                }
            }
            return closed
        }
        for writeBack in closed { writeBack.programClosed() }
    }
}
