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

    /// Starts `body` on a new thread named `name` (at most 15 bytes show in /proc).
    public static func start(name: String, _ body: @escaping @Sendable () -> Void) throws(SystemCallError)
        -> ThreadHandle
    {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(
            &thread, nil,
            { context in
                let box = Unmanaged<Box>.fromOpaque(context!).takeRetainedValue()
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
