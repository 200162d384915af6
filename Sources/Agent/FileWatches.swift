import CSysmirror
import LinuxSystem
import Synchronization
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// What keeps the sessions' file caches true: every path a session keeps answers for is watched with inotify
/// inside the pod, the object it names and the directory it is named in (a change of the directory's
/// entries, such as the kubelet's `..data` symlink swap for a ConfigMap, changes what the path names), and a
/// change tells the session which of its paths to drop. One inotify instance and one thread for the agent.
final class FileWatches: Sendable {
    /// Told, on the watches' thread, which of a session's paths may have changed.
    typealias Listener = @Sendable ([[UInt8]]) -> Void

    struct State {
        /// By watch descriptor: by session, the paths that rely on it.
        var paths: [Int32: [Int: Set<[UInt8]>]] = [:]
        var listeners: [Int: Listener] = [:]
    }

    private let inotify: OwnedDescriptor
    private let stop: OwnedDescriptor
    private let state = Mutex(State())
    private let thread = Mutex<ThreadHandle?>(nil)
    /// At most this many watches (besides the kernel's own limit, fs.inotify.max_user_watches).
    let limit: Int

    /// For what a path names and for the directory it is named in alike: a file's content and attributes, a
    /// directory's entries (a listing is kept too), either one going away.
    static let events = UInt32(
        IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF | IN_CREATE | IN_DELETE | IN_MOVED_FROM
            | IN_MOVED_TO)
    /// File systems whose files change without inotify hearing of it: procfs, sysfs, NFS, SMB/CIFS, FUSE, 9p.
    static let silentFileSystems: Set<Int> = [
        0x9fa0, 0x6265_6572, 0x6969, 0xFF53_4D42, 0xFE53_4D42, 0x6573_5546, 0x0102_1997,
    ]

    init(limit: Int = .max) throws(SystemCallError) {
        inotify = OwnedDescriptor(taking: try systemCall("inotify_init1") { inotify_init1(Int32(IN_CLOEXEC)) })
        stop = OwnedDescriptor(taking: try systemCall("eventfd") { sysm_eventfd() })
        self.limit = limit
        var started: ThreadHandle? = try ThreadHandle.start(name: "sysmirror-watch") { [self] in run() }
        thread.withLock { $0 = started.take() }
    }

    /// Ends the thread (the agent is stopping).
    func close() {
        var one: UInt64 = 1
        _ = write(stop.raw, &one, 8)
        thread.withLock { $0.take() }?.join()
    }

    func listen(session: Int, _ listener: @escaping Listener) {
        state.withLock { $0.listeners[session] = listener }
    }

    /// The session is gone: its paths no longer matter, and watches nobody needs are removed.
    func end(session: Int) {
        state.withLock { state in
            state.listeners[session] = nil
            for descriptor in Array(state.paths.keys) {
                state.paths[descriptor]?[session] = nil
                if state.paths[descriptor]?.isEmpty == true {
                    state.paths[descriptor] = nil
                    inotify_rm_watch(inotify.raw, descriptor)
                }
            }
        }
    }

    /// Watches what `path` names (`object`, nil when it does not exist) and `directory`, where it is named,
    /// for `session`; nil when both are watched, else why not (the answer is then not to be kept).
    func watch(_ path: [UInt8], object: FileDescriptor?, directory: FileDescriptor, session: Int) -> String? {
        for fd in [object, directory].compactMap({ $0 }) {
            let type = sysm_filesystem_type(fd.rawValue)
            if Self.silentFileSystems.contains(type) {
                return "a file system that does not report changes (type 0x\(String(type, radix: 16)))"
            }
        }
        // Added and recorded under the lock, as removals are: a watch removed for a change while another
        // session added itself to it would otherwise be gone with that session's path still counted on it.
        return state.withLock { state -> String? in
            if state.paths.count + 2 > limit { return "the agent's watch limit (\(limit))" }
            for fd in [object, directory] {
                guard let fd else { continue }
                let descriptor = inotify_add_watch(
                    inotify.raw, "/proc/self/fd/\(fd.rawValue)", Self.events | UInt32(IN_MASK_ADD))
                guard descriptor >= 0 else {
                    let errno = currentErrno()
                    return errno == .noSpace
                        ? "the inotify watch limit (fs.inotify.max_user_watches)" : "inotify: \(errno)"
                }
                state.paths[descriptor, default: [:]][session, default: []].insert(path)
            }
            return nil
        }
    }

    private func run() {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            var fds = [
                pollfd(fd: inotify.raw, events: Int16(POLLIN), revents: 0),
                pollfd(fd: stop.raw, events: Int16(POLLIN), revents: 0),
            ]
            guard (try? systemCall("poll", { poll(&fds, 2, -1) })) != nil, fds[1].revents == 0 else { return }
            let count = buffer.withUnsafeMutableBytes { read(inotify.raw, $0.baseAddress, $0.count) }
            guard count > 0 else { continue }
            changed(descriptors(in: buffer[..<count]))
        }
    }

    /// The watch descriptors of the events in `bytes` (struct inotify_event: wd, mask, cookie, len, name);
    /// an overflowed queue (wd -1) names every watch.
    private func descriptors(in bytes: ArraySlice<UInt8>) -> Set<Int32> {
        var found = Set<Int32>()
        var offset = bytes.startIndex
        while offset + 16 <= bytes.endIndex {
            let field = { (at: Int) in
                bytes[(offset + at)..<(offset + at + 4)].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
            }
            let descriptor = Int32(bitPattern: field(0))
            if field(4) & UInt32(IN_Q_OVERFLOW) != 0 { return Set(state.withLock { Array($0.paths.keys) }) }
            found.insert(descriptor)
            offset += 16 + Int(field(12))
        }
        return found
    }

    /// Tells each session which of its paths relied on the changed watches, and forgets them there: a session
    /// that asks again is watched again. Watches that no path needs any more are removed.
    private func changed(_ descriptors: Set<Int32>) {
        let told = state.withLock { state -> [(Listener, [[UInt8]])] in
            var bySession: [Int: Set<[UInt8]>] = [:]
            for descriptor in descriptors {
                for (session, paths) in state.paths.removeValue(forKey: descriptor) ?? [:] {
                    bySession[session, default: []].formUnion(paths)
                }
                inotify_rm_watch(inotify.raw, descriptor)
            }
            return bySession.compactMap { session, paths in state.listeners[session].map { ($0, Array(paths)) } }
        }
        for (listener, paths) in told { listener(paths) }
    }
}
