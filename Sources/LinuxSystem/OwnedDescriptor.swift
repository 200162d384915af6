#if canImport(Glibc)
    import Glibc
#endif

/// A descriptor with one owner, closed exactly once: when the owner drops it, or gives it up with
/// `release` (to the kernel's ADDFD, which takes a copy) or `close`. It cannot be copied, so two owners
/// cannot close the same number, and a number closed and reused cannot be closed again by mistake.
public struct OwnedDescriptor: ~Copyable, Sendable {
    /// The descriptor's number, for calls that take one; valid while this owner lives.
    public let raw: Int32

    /// Takes ownership of `raw`, which nobody else closes.
    public init(taking raw: Int32) { self.raw = raw }

    /// Closes it now. A failed close still releases the number (Linux), so there is nothing to retry.
    public consuming func close() {
        let raw = self.raw
        discard self
        _ = Glibc.close(raw)
    }

    /// Gives the number up without closing it: the caller is its owner now.
    public consuming func release() -> Int32 {
        let raw = self.raw
        discard self
        return raw
    }

    /// A second descriptor on the same open file, with an owner of its own (close-on-exec).
    public func duplicate() throws(SystemCallError) -> OwnedDescriptor {
        OwnedDescriptor(taking: try systemCall("fcntl(F_DUPFD_CLOEXEC)") { fcntl(raw, F_DUPFD_CLOEXEC, 0) })
    }

    /// A new open file description of the same file (its own offset; `flags`' access mode, close-on-exec),
    /// as opening /proc/self/fd/N gives, from a kept descriptor of that folder: a cached open makes one per
    /// call, and the walk through /proc/self each time cost half a microsecond more.
    public func reopen(_ flags: Int32) throws(SystemCallError) -> OwnedDescriptor {
        OwnedDescriptor(
            taking: try systemCall("open(/proc/self/fd/\(raw))") {
                openat(ownDescriptors, String(raw), flags | O_CLOEXEC)
            })
    }

    /// The file status flags (O_NONBLOCK, O_APPEND, access mode).
    public func statusFlags() throws(SystemCallError) -> Int32 {
        try systemCall("fcntl(F_GETFL)") { fcntl(raw, F_GETFL) }
    }

    /// Sets or clears O_NONBLOCK on the open file (shared with every descriptor on it).
    public func setNonBlocking(_ on: Bool) throws(SystemCallError) {
        let flags = try statusFlags()
        let wanted = on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK
        if wanted != flags { _ = try systemCall("fcntl(F_SETFL)") { fcntl(raw, F_SETFL, wanted) } }
    }

    /// fchmod: the file's permission bits.
    public func setPermissions(_ mode: mode_t) throws(SystemCallError) {
        _ = try systemCall("fchmod") { fchmod(raw, mode) }
    }

    /// futimens: the file's access and modification times.
    public func setTimes(accessed: timespec, modified: timespec) throws(SystemCallError) {
        let times = [accessed, modified]
        _ = try systemCall("futimens") { futimens(raw, times) }
    }

    deinit { _ = Glibc.close(raw) }
}

/// /proc/self/fd, for `reopen`: opened once, kept for the process's life (close-on-exec; a failed open leaves
/// -1, and each reopen then fails with EBADF).
private let ownDescriptors = Glibc.open("/proc/self/fd", GNU.openPath | O_DIRECTORY | O_CLOEXEC)

/// What `fd` is ready for among `events` (POLLIN, POLLOUT; POLLHUP and POLLERR always), waiting up to
/// `milliseconds` (0: not at all); 0 when nothing is, or when poll itself failed (a closed descriptor).
public func readiness(of fd: Int32, for events: Int16, milliseconds: Int32 = 0) -> Int16 {
    var entry = pollfd(fd: fd, events: events, revents: 0)
    return (try? systemCall("poll") { poll(&entry, 1, milliseconds) }) == 1 ? entry.revents : 0
}

/// An owned descriptor that several holders share (a pool, an event loop's registration and its owner):
/// closed once, when the last holder lets go.
public final class SharedDescriptor: Sendable {
    public let descriptor: OwnedDescriptor
    public var raw: Int32 { descriptor.raw }

    public init(_ descriptor: consuming OwnedDescriptor) { self.descriptor = descriptor }
}
