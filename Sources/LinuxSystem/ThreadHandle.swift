import CSysmirror

#if canImport(Glibc)
    import Glibc
#endif

/// A plain OS thread, owned: whoever starts one either joins it (`join`) or, by dropping the handle, lets it
/// go detached. Either way its stack is given back when it ends; a joinable thread nobody joins would keep
/// its stack mapping for the life of the process. Threads that live as long as the process start with
/// `detached`. The supervisor's receiver blocks in an ioctl and must answer on the thread that received
/// (docs/architecture.md, "Speed"), so it cannot live in a cooperative pool.
public struct ThreadHandle: ~Copyable, @unchecked Sendable {  // pthread_t is an opaque integer, safe to move
    private let thread: pthread_t

    /// The signals sysmirror's own threads never take: the terminal's and termination signals are the
    /// main thread's or its signal thread's (`sigwaitinfo`) to handle, and a process-directed one delivered to
    /// a helper thread would end sysmirror with its default action instead. SIGPIPE: a closed peer is an
    /// EPIPE to handle.
    public static let blockedSignals: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE]

    private final class Box {
        let name: String
        let body: () -> Void
        init(_ name: String, _ body: @escaping () -> Void) {
            self.name = name
            self.body = body
        }
    }

    private init(thread: pthread_t) { self.thread = thread }

    /// Starts `body` on a new thread named `name` (at most 15 bytes show in /proc), with `blockedSignals`
    /// blocked. Join it, or drop the handle to detach it.
    public static func start(name: String, _ body: @escaping @Sendable () -> Void) throws(SystemCallError)
        -> ThreadHandle
    {
        ThreadHandle(thread: try create(name: name, detached: false, body))
    }

    /// Starts `body` on a detached thread: for threads that end with the process or by themselves, and that
    /// nobody waits for.
    public static func detached(name: String, _ body: @escaping @Sendable () -> Void) throws(SystemCallError) {
        _ = try create(name: name, detached: true, body)
    }

    private static func create(name: String, detached: Bool, _ body: @escaping @Sendable () -> Void)
        throws(SystemCallError) -> pthread_t
    {
        let box = Unmanaged.passRetained(Box(String(name.prefix(15)), body)).toOpaque()
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        if detached { pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED)) }
        var thread = pthread_t()
        let result = pthread_create(
            &thread, &attributes,
            { context in
                let box = Unmanaged<Box>.fromOpaque(context!).takeRetainedValue()
                var blocked = sigset_t()
                sigemptyset(&blocked)
                for signal in ThreadHandle.blockedSignals { sigaddset(&blocked, signal) }
                pthread_sigmask(SIG_BLOCK, &blocked, nil)
                // Named from inside: a detached thread's handle may be stale by the time its creator could.
                _ = sysm_set_thread_name(pthread_self(), box.name)
                box.body()
                return nil
            }, box)
        guard result == 0 else {
            Unmanaged<Box>.fromOpaque(box).release()
            throw SystemCallError("pthread_create", .init(rawValue: result))
        }
        return thread
    }

    /// Waits for the thread to end.
    public consuming func join() {
        let thread = self.thread
        discard self
        _ = pthread_join(thread, nil)  // EDEADLK (joining itself) cannot happen: the owner is another thread
    }

    deinit {
        _ = pthread_detach(thread)  // an unjoined handle: the thread cleans up after itself when it ends
    }
}
