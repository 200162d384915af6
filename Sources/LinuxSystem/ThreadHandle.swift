import CSysmirror

#if canImport(Glibc)
    import Glibc
#endif

/// A plain OS thread. The supervisor's receiver blocks in an ioctl and must answer on the thread that
/// received (design.md, "Speed"), so it cannot live in a cooperative pool.
public struct ThreadHandle: @unchecked Sendable {
    public let thread: pthread_t

    private final class Box {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    /// The signals sysmirror's own threads never take: the terminal's and termination signals are the
    /// main thread's or its signal thread's (`sigwaitinfo`) to handle, and a process-directed one delivered to
    /// a helper thread would end sysmirror with its default action instead. SIGPIPE: a closed peer is an
    /// EPIPE to handle.
    public static let blockedSignals: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE]

    /// Starts `body` on a new thread named `name` (at most 15 bytes show in /proc), with `blockedSignals`
    /// blocked.
    public static func start(name: String, _ body: @escaping @Sendable () -> Void) throws(SystemCallError)
        -> ThreadHandle
    {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(
            &thread, nil,
            { context in
                let box = Unmanaged<Box>.fromOpaque(context!).takeRetainedValue()
                var blocked = sigset_t()
                sigemptyset(&blocked)
                for signal in ThreadHandle.blockedSignals { sigaddset(&blocked, signal) }
                pthread_sigmask(SIG_BLOCK, &blocked, nil)
                box.body()
                return nil
            }, box)
        guard result == 0 else {
            Unmanaged<Box>.fromOpaque(box).release()
            throw SystemCallError("pthread_create", .init(rawValue: result))
        }
        _ = sysm_set_thread_name(thread, String(name.prefix(15)))
        return ThreadHandle(thread: thread)
    }

    /// Waits for the thread to end.
    public func join() {
        _ = pthread_join(thread, nil)
    }
}
