import AgentProtocol
import CSysmirror
import LinuxSystem
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// The target's file system, seen through a directory fd used as the root of every lookup: `openat2` with
/// RESOLVE_IN_ROOT makes `..`, absolute symlinks and symlinks that point outside resolve inside it.
/// Blocking calls: the server runs them on its thread pool.
public struct TargetRoot: Sendable {
    let root: FileDescriptor

    /// Opens `directory` (for a target process, `/proc/PID/root`) as the root.
    public init(directory: String) throws(SystemCallError) {
        root = FileDescriptor(
            rawValue: try systemCall("open(\(directory))") {
                open(directory, GNU.openPath | O_DIRECTORY | O_CLOEXEC)
            })
    }

    /// What an open for reading found.
    public enum Opened {
        case file(FileDescriptor, FileMetadata)
        case directory(FileDescriptor, FileMetadata)
        case failure(Response)
    }

    static func failure(_ errno: Int32, _ message: String = "") -> Response { .failure(errno: errno, message: message) }

    /// A failure as the program in the pod would see it.
    public struct PodError: Error, CustomStringConvertible {
        public let response: Response
        init(_ errno: Int32, _ message: String = "") { response = TargetRoot.failure(errno, message) }
        init(_ response: Response) { self.response = response }

        public var description: String {
            guard case .failure(let errno, let message) = response else { return "\(response)" }
            return message.isEmpty ? "\(Errno(rawValue: errno))" : message
        }
    }

    /// `path` as a lookup relative to the root; a NUL inside a path would silently cut it, so it is refused.
    static func relative(_ path: [UInt8]) -> Result<String, PodError> {
        if path.contains(0) { return .failure(PodError(EINVAL, "the path contains a NUL byte")) }
        if path.isEmpty { return .failure(PodError(ENOENT)) }
        let trimmed = path.drop { $0 == UInt8(ascii: "/") }
        return .success(trimmed.isEmpty ? "." : String(decoding: trimmed, as: UTF8.self))
    }

    /// openat2 inside the root; the errno is the one the program would get in the pod.
    func lookup(_ path: [UInt8], flags: Int32, mode: UInt32 = 0) -> Result<FileDescriptor, PodError> {
        switch Self.relative(path) {
        case .failure(let error): return .failure(error)
        case .success(let relative):
            let fd = sysm_openat2_in_root(
                root.rawValue, relative, UInt64(UInt32(bitPattern: flags | O_CLOEXEC)), UInt64(mode))
            return fd >= 0 ? .success(FileDescriptor(rawValue: fd)) : .failure(PodError(currentErrno().rawValue))
        }
    }

    static func metadata(of fd: FileDescriptor) -> Result<FileMetadata, PodError> {
        var info = Glibc.stat()
        guard fstat(fd.rawValue, &info) == 0 else { return .failure(PodError(currentErrno().rawValue)) }
        return .success(FileMetadata(info))
    }

    /// stat or lstat.
    public func stat(_ path: [UInt8], followSymlinks: Bool) -> Response {
        switch lookup(path, flags: GNU.openPath | (followSymlinks ? 0 : O_NOFOLLOW)) {
        case .failure(let error): return error.response
        case .success(let fd):
            defer { try? fd.close() }
            switch Self.metadata(of: fd) {
            case .success(let metadata): return .metadata(metadata)
            case .failure(let error): return error.response
            }
        }
    }

    /// access(2), answered as the agent's user (root in a pod: read and write always pass, execute needs a bit).
    public func access(_ path: [UInt8], mode: Int32) -> Response {
        switch lookup(path, flags: GNU.openPath) {
        case .failure(let error): return error.response
        case .success(let fd):
            defer { try? fd.close() }
            return faccessat(fd.rawValue, "", mode, GNU.emptyPath) == 0 ? .done : Self.failure(currentErrno().rawValue)
        }
    }

    public func readlink(_ path: [UInt8]) -> Response {
        switch lookup(path, flags: GNU.openPath | O_NOFOLLOW) {
        case .failure(let error): return error.response
        case .success(let fd):
            defer { try? fd.close() }
            var info = Glibc.stat()
            guard fstat(fd.rawValue, &info) == 0 else { return Self.failure(currentErrno().rawValue) }
            guard info.st_mode & S_IFMT == S_IFLNK else { return Self.failure(EINVAL) }
            var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX))
            let count = readlinkat(fd.rawValue, "", &buffer, buffer.count)
            guard count >= 0 else { return Self.failure(currentErrno().rawValue) }
            return .text(Array(buffer[..<count]))
        }
    }

    /// Opens for reading: a regular file or a directory. Anything else (a device, a FIFO, a socket) is
    /// refused with ENXIO before it is opened for real, since opening it could block or have effects.
    public func openForReading(_ path: [UInt8], flags: Int32) -> Opened {
        let probe: FileDescriptor
        switch lookup(path, flags: GNU.openPath | (flags & O_NOFOLLOW)) {
        case .failure(let error): return .failure(error.response)
        case .success(let fd): probe = fd
        }
        defer { try? probe.close() }
        let metadata: FileMetadata
        switch Self.metadata(of: probe) {
        case .failure(let error): return .failure(error.response)
        case .success(let found): metadata = found
        }
        if metadata.isDirectory {
            let fd = openat(probe.rawValue, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            return fd >= 0
                ? .directory(FileDescriptor(rawValue: fd), metadata) : .failure(Self.failure(currentErrno().rawValue))
        }
        if flags & O_DIRECTORY != 0 { return .failure(Self.failure(ENOTDIR)) }
        if metadata.mode & UInt32(S_IFMT) == UInt32(S_IFLNK) { return .failure(Self.failure(ELOOP)) }  // O_NOFOLLOW
        guard metadata.isRegularFile else {
            return .failure(
                Self.failure(
                    ENXIO, "sysmirror serves regular files and directories from the pod, not devices, FIFOs or sockets")
            )
        }
        switch lookup(path, flags: O_RDONLY | O_NONBLOCK | O_NOCTTY | (flags & O_NOFOLLOW)) {
        case .failure(let error): return .failure(error.response)
        case .success(let fd): return .file(fd, metadata)
        }
    }

    /// Opens for writing (`--fs-mode write`, `OpenIntent.stream`): a regular file only, with the caller's
    /// creation flags.
    public func openForWriting(_ path: [UInt8], flags: Int32, mode: UInt32) -> Result<
        (FileDescriptor, FileMetadata), PodError
    > {
        openRegularFile(
            path, access: O_WRONLY, flags: flags & (O_CREAT | O_EXCL | O_TRUNC | O_APPEND | O_NOFOLLOW), mode: mode)
    }

    /// Opens read-write (`OpenIntent.readWrite`): the content is streamed to the client, whose copy is
    /// written back when the program closes it. O_TRUNC empties the pod's file now, as the kernel would.
    public func openForReadWrite(_ path: [UInt8], flags: Int32, mode: UInt32) -> Result<
        (FileDescriptor, FileMetadata), PodError
    > {
        openRegularFile(path, access: O_RDWR, flags: flags & (O_CREAT | O_EXCL | O_TRUNC | O_NOFOLLOW), mode: mode)
    }

    /// A regular file opened for writing; directories, devices, FIFOs and sockets are refused after a look
    /// with O_PATH, before they are opened for real.
    func openRegularFile(_ path: [UInt8], access: Int32, flags: Int32, mode: UInt32) -> Result<
        (FileDescriptor, FileMetadata), PodError
    > {
        if case .success(let probe) = lookup(path, flags: GNU.openPath) {
            defer { try? probe.close() }
            if case .success(let existing) = Self.metadata(of: probe) {
                if existing.isDirectory { return .failure(PodError(EISDIR)) }
                if !existing.isRegularFile {
                    return .failure(
                        PodError(ENXIO, "sysmirror writes regular files in the pod, not devices, FIFOs or sockets"))
                }
            }
        }
        switch lookup(path, flags: access | flags | O_NOCTTY | O_NONBLOCK, mode: mode) {
        case .failure(let error): return .failure(error)
        case .success(let fd):
            switch Self.metadata(of: fd) {
            case .success(let metadata): return .success((fd, metadata))
            case .failure(let error):
                try? fd.close()
                return .failure(error)
            }
        }
    }

    /// The entries of an open directory, without `.` and `..`, encoded for streaming. Takes `directory` over
    /// and closes it.
    public static func entries(of directory: FileDescriptor) -> Result<[UInt8], PodError> {
        guard let stream = fdopendir(directory.rawValue) else { return .failure(PodError(currentErrno().rawValue)) }
        defer { closedir(stream) }
        var encoded: [UInt8] = []
        while let entry = readdir(stream) {
            let name = entryName(entry)
            if name == [46] || name == [46, 46] { continue }
            DirectoryEntryCodec.encode(DirectoryEntry(type: entry.pointee.d_type, name: name), into: &encoded)
        }
        return .success(encoded)
    }
}

extension FileMetadata {
    init(_ info: stat) {
        self.init(
            mode: info.st_mode, uid: info.st_uid, gid: info.st_gid,
            blockSize: UInt32(truncatingIfNeeded: info.st_blksize),
            linkCount: UInt64(info.st_nlink), size: UInt64(max(info.st_size, 0)), device: UInt64(info.st_dev),
            inode: UInt64(info.st_ino), specialDevice: UInt64(info.st_rdev), blocks: UInt64(max(info.st_blocks, 0)),
            accessed: Time(info.st_atim), modified: Time(info.st_mtim), changed: Time(info.st_ctim))
    }
}

extension FileMetadata.Time {
    init(_ time: timespec) {
        self.init(seconds: Int64(time.tv_sec), nanoseconds: UInt32(truncatingIfNeeded: time.tv_nsec))
    }
}
