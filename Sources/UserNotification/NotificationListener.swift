import CSysmirror
import LinuxSystem
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// The seccomp user-notification listener: receive a call, check it is still pending, answer it.
public final class NotificationListener: Sendable {
    public let descriptor: FileDescriptor

    public init(descriptor: FileDescriptor) {
        self.descriptor = descriptor
    }

    /// Blocks until a call arrives. Throws EINTR (not retried: the caller decides), and ENOENT when the call
    /// was interrupted between arrival and receipt, or, on newer kernels, when no filtered process is left.
    public func receive() throws(SystemCallError) -> Notification {
        var raw = seccomp_notif()
        _ = try systemCall("ioctl(SECCOMP_IOCTL_NOTIF_RECV)", retryOnInterrupt: false) {
            sysm_notif_recv(descriptor.rawValue, &raw)
        }
        return Notification(raw)
    }

    /// Whether the call is still waiting: false once the program was interrupted or died. Checked after
    /// reading its memory, so that what was read belongs to the caller and not to a recycled pid.
    public func isPending(_ id: UInt64) -> Bool {
        sysm_notif_id_valid(descriptor.rawValue, id) == 0
    }

    /// Lets the kernel run the call as if it had not been intercepted.
    public func continueCall(_ id: UInt64) throws(SystemCallError) {
        var response = seccomp_notif_resp(id: id, val: 0, error: 0, flags: UInt32(SECCOMP_USER_NOTIF_FLAG_CONTINUE))
        try send(&response)
    }

    /// Answers the call with -1 and `errno`.
    public func fail(_ id: UInt64, errno: Int32) throws(SystemCallError) {
        var response = seccomp_notif_resp(id: id, val: 0, error: -errno, flags: 0)
        try send(&response)
    }

    /// Answers the call with `value`.
    public func succeed(_ id: UInt64, value: Int64) throws(SystemCallError) {
        var response = seccomp_notif_resp(id: id, val: value, error: 0, flags: 0)
        try send(&response)
    }

    /// Puts `source` (an fd of sysmirror's) into the program as a new fd and answers the call with its number,
    /// in one step (SECCOMP_ADDFD_FLAG_SEND): if the call is gone, no fd leaks into the program.
    /// `caller`: the calling thread, held on this thread's CPU meanwhile (`sysm_notif_addfd_here`): ADDFD wakes
    /// it to install the descriptor, and a wake-up to an idle CPU costs tens of microseconds.
    public func answer(_ id: UInt64, installing source: Int32, closeOnExec: Bool, caller: Int32)
        throws(SystemCallError) -> Int32
    {
        var request = seccomp_notif_addfd(
            id: id, flags: UInt32(SECCOMP_ADDFD_FLAG_SEND), srcfd: UInt32(source), newfd: 0,
            newfd_flags: closeOnExec ? UInt32(O_CLOEXEC) : 0)
        return try systemCall("ioctl(SECCOMP_IOCTL_NOTIF_ADDFD)") {
            sysm_notif_addfd_here(descriptor.rawValue, &request, caller)
        }
    }

    /// Puts `source` into the program as a new descriptor, without answering the call yet; returns its
    /// number. For when sysmirror must drop its own reference before the program can run (SEND would let
    /// it run at once); if the call is then interrupted, the program keeps a descriptor it does not know of.
    public func install(_ id: UInt64, _ source: Int32, closeOnExec: Bool) throws(SystemCallError) -> Int32 {
        var request = seccomp_notif_addfd(
            id: id, flags: 0, srcfd: UInt32(source), newfd: 0, newfd_flags: closeOnExec ? UInt32(O_CLOEXEC) : 0)
        return try systemCall("ioctl(SECCOMP_IOCTL_NOTIF_ADDFD)") { sysm_notif_addfd(descriptor.rawValue, &request) }
    }

    /// Puts `source` into the program as its descriptor `number`, closing whatever was there
    /// (SECCOMP_ADDFD_FLAG_SETFD), without answering the call yet.
    public func replace(_ id: UInt64, descriptor number: Int32, with source: Int32, closeOnExec: Bool)
        throws(SystemCallError)
    {
        var request = seccomp_notif_addfd(
            id: id, flags: UInt32(SECCOMP_ADDFD_FLAG_SETFD), srcfd: UInt32(source), newfd: UInt32(number),
            newfd_flags: closeOnExec ? UInt32(O_CLOEXEC) : 0)
        _ = try systemCall("ioctl(SECCOMP_IOCTL_NOTIF_ADDFD)") { sysm_notif_addfd(descriptor.rawValue, &request) }
    }

    private func send(_ response: inout seccomp_notif_resp) throws(SystemCallError) {
        _ = try systemCall("ioctl(SECCOMP_IOCTL_NOTIF_SEND)") { sysm_notif_send(descriptor.rawValue, &response) }
    }

    /// Asks the kernel to run the woken side on the waker's CPU (6.6+): the difference between tens of
    /// microseconds and a few per routed call on a machine with idle CPUs.
    public func enableSynchronousWakeUp() throws(SystemCallError) {
        _ = try systemCall("ioctl(SECCOMP_IOCTL_NOTIF_SET_FLAGS)") {
            sysm_notif_set_flags(descriptor.rawValue, UInt64(SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP))
        }
    }

    /// True once every filtered process is gone (the listener reports POLLHUP).
    public func hasHungUp() -> Bool {
        var entry = pollfd(fd: descriptor.rawValue, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, 0) == 1 && entry.revents & Int16(POLLHUP) != 0
    }
}
