import CSysmirror

#if canImport(Glibc)
    import Glibc
#endif

/// The program's descriptors, as sysmirror reaches them.
enum ProgramDescriptor {
    /// A descriptor of sysmirror's own on the open file `number` of thread (or process) `pid`
    /// (pidfd_getfd); nil when the process or the descriptor is gone. The caller closes it.
    static func duplicate(pid: Int32, number: Int32) -> Int32? {
        // PIDFD_THREAD (6.9): a notification names a thread, whose descriptors are its process's.
        var pidfd = sysm_pidfd_open(pid, 0o200)
        if pidfd < 0 { pidfd = sysm_pidfd_open(pid, 0) }
        guard pidfd >= 0 else { return nil }
        defer { close(pidfd) }
        let fd = sysm_pidfd_getfd(pidfd, number, 0)
        return fd >= 0 ? fd : nil
    }

    /// An integer SOL_SOCKET option of `fd`; -1 when it is not a socket.
    static func socketOption(_ fd: Int32, _ name: Int32) -> Int32 {
        var value: Int32 = -1
        var size = socklen_t(4)
        return getsockopt(fd, SOL_SOCKET, name, &value, &size) == 0 ? value : -1
    }
}
