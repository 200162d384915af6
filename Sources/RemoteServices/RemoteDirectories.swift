import AgentProtocol
import LinuxSystem
import Synchronization
import SystemPackage
import UserNotification

#if canImport(Glibc)
    import Glibc
#endif

/// Remote directories, given to the program as real local directories holding one empty placeholder per
/// remote entry (of the entry's type), so that getdents64 runs natively: `ls`, readdir and Go's os.ReadDir
/// see the pod's names. A path through a placeholder (`fstatat(dirfd, "name")`, `openat(dirfd, ...)`) is
/// translated back to the pod's path, so its metadata and content still come from the pod.
///
/// Each remote directory has one placeholder for the session, made at its first open and brought in line
/// with the listing at each later one (as a real directory changes under its readers): a program that lists
/// a directory again and again costs one open each time, and no new folder.
package final class RemoteDirectories: Sendable {
    /// A private folder for this session's placeholders (and large files' unnamed contents), removed when
    /// the session ends.
    package let root: [UInt8]
    private let state = Mutex(State())

    struct State {
        var next = 1
        /// By placeholder number.
        var remotePaths: [Int: [UInt8]] = [:]
        /// By remote path: its placeholder's number, and the entries it holds (name → d_type).
        var placeholders: [[UInt8]: (number: Int, entries: [[UInt8]: UInt8])] = [:]
    }

    static let prefix = "sysmirror-session-"

    /// Makes the folder in `$TMPDIR`, or /tmp, named after this process; first removes the folders of
    /// sessions whose sysmirror was killed before it could clean up.
    package init() throws(SystemCallError) {
        let base = getenv("TMPDIR").map { String(cString: $0) }.flatMap { $0.hasPrefix("/") ? $0 : nil } ?? "/tmp"
        Self.removeAbandoned(in: base)
        var template = Array("\(base)/\(Self.prefix)\(getpid())-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw SystemCallError("mkdtemp", currentErrno()) }
        root = template.dropLast().map { UInt8(bitPattern: $0) }
    }

    /// The placeholder of `remotePath`, holding `entries` (made, or brought in line with them); returns an
    /// O_DIRECTORY fd on it (close-on-exec), or the errno.
    func open(_ remotePath: [UInt8], entries: [DirectoryEntry]) -> Result<OwnedDescriptor, Errno> {
        // A placeholder the local file system refuses (a name too long for it) is left out: the listing misses
        // that entry, and the rest works.
        var wanted: [[UInt8]: UInt8] = [:]
        for entry in entries where !entry.name.contains(UInt8(ascii: "/")) && !entry.name.contains(0) {
            wanted[entry.name] = wanted[entry.name] ?? entry.type
        }
        // One at a time: two opens of one directory must not both bring it in line.
        return state.withLock { state in
            let known = state.placeholders[remotePath]
            let number = known?.number ?? state.next
            let directory = String(decoding: root, as: UTF8.self) + "/\(number)"
            let fd: OwnedDescriptor
            do throws(SystemCallError) {
                if known == nil {
                    _ = try systemCall("mkdir") { mkdir(directory, 0o700) }
                    state.next += 1
                    state.remotePaths[number] = remotePath
                }
                fd = OwnedDescriptor(
                    taking: try systemCall("open") { Glibc.open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC) })
            } catch {
                return .failure(error.errno)
            }
            let held = known?.entries ?? [:]
            if held != wanted {
                for (name, type) in held where wanted[name] != type { Self.remove(name, type, in: fd.raw) }
                for (name, type) in wanted where held[name] != type { Self.make(name, type, in: fd.raw) }
            }
            state.placeholders[remotePath] = (number, wanted)
            return .success(fd)
        }
    }

    /// One entry's placeholder in `folder`: an empty file, folder or link of its type.
    private static func make(_ name: [UInt8], _ type: UInt8, in folder: Int32) {
        let name = String(decoding: name, as: UTF8.self)
        switch type {
        case DirectoryEntry.directory: _ = mkdirat(folder, name, 0o700)
        case DirectoryEntry.symbolicLink: _ = symlinkat(".", folder, name)
        default:
            if let file = try? systemCall(
                "openat", { openat(folder, name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o600) })
            {
                OwnedDescriptor(taking: file).close()
            }
        }
    }

    private static func remove(_ name: [UInt8], _ type: UInt8, in folder: Int32) {
        _ = unlinkat(folder, String(decoding: name, as: UTF8.self), type == DirectoryEntry.directory ? AT_REMOVEDIR : 0)
    }

    /// The pod's path for a local path inside a placeholder; nil for any other path.
    func remotePath(for path: [UInt8]) -> [UInt8]? {
        guard path.count > root.count + 1, path.starts(with: root), path[root.count] == UInt8(ascii: "/") else {
            return nil
        }
        let rest = path[(root.count + 1)...]
        let digits = rest.prefix { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
        guard let number = Int(String(decoding: digits, as: UTF8.self)),
            let remote = state.withLock({ $0.remotePaths[number] })
        else { return nil }
        let below = rest[digits.endIndex...]
        return remote == [UInt8(ascii: "/")] && !below.isEmpty ? Array(below) : remote + below
    }

    /// Removes every placeholder. They are two levels deep: placeholders hold only empty entries.
    package func removeAll() {
        let path = String(decoding: root, as: UTF8.self)
        Self.removeTree(path, depth: 2)
    }

    /// Folders of this user's sessions whose process is gone.
    static func removeAbandoned(in base: String) {
        guard let stream = opendir(base) else { return }
        var abandoned: [String] = []
        while let entry = readdir(stream) {
            let name = String(decoding: entryName(entry), as: UTF8.self)
            guard name.hasPrefix(prefix), let pid = Int32(name.dropFirst(prefix.count).prefix { $0 != "-" }) else {
                continue
            }
            var info = stat()
            let path = base + "/" + name
            guard lstat(path, &info) == 0, info.st_uid == getuid(), kill(pid, 0) == -1, errno == ESRCH else { continue }
            abandoned.append(path)
        }
        _ = closedir(stream)  // frees the stream whatever it returns
        for path in abandoned { removeTree(path, depth: 2) }
    }

    /// Removes what it can: a placeholder that is gone already, or that the user changed so that it cannot
    /// be removed, is left (the folder is in $TMPDIR, and the next session's clean-up tries again).
    static func removeTree(_ path: String, depth: Int) {
        if depth > 0, let stream = opendir(path) {
            while let entry = readdir(stream) {
                let name = String(decoding: entryName(entry), as: UTF8.self)
                if name == "." || name == ".." { continue }
                let child = path + "/" + name
                if entry.pointee.d_type == DT_DIR { removeTree(child, depth: depth - 1) } else { _ = unlink(child) }
            }
            _ = closedir(stream)
        }
        _ = rmdir(path)
    }
}
