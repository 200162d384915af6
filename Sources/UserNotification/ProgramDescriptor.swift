import CSysmirror
import LinuxSystem

#if canImport(Glibc)
    import Glibc
#endif

/// The program's descriptors, as sysmirror reaches them.
package enum ProgramDescriptor {
    /// A descriptor of sysmirror's own on the open file `number` of thread (or process) `pid`
    /// (pidfd_getfd); nil when the process or the descriptor is gone.
    package static func duplicate(pid: Int32, number: Int32) -> OwnedDescriptor? {
        // PIDFD_THREAD (6.9): a notification names a thread, whose descriptors are its process's.
        guard let pidfd = (try? systemCall("pidfd_open") { sysm_pidfd_open(pid, 0o200) })
            ?? (try? systemCall("pidfd_open") { sysm_pidfd_open(pid, 0) })
        else { return nil }
        let process = OwnedDescriptor(taking: pidfd)
        return (try? systemCall("pidfd_getfd") { sysm_pidfd_getfd(process.raw, number, 0) }).map(OwnedDescriptor.init(taking:))
    }
}
