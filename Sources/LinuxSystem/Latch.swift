import CSysmirror

#if canImport(Glibc)
    import Glibc
#endif

/// A one-shot signal from one thread to another.
public final class Latch: Sendable {
    private let fd = sysm_eventfd()

    public init() {}

    public func signal() {
        var one: UInt64 = 1
        _ = write(fd, &one, 8)
    }

    /// Waits for the signal; once only.
    public func wait() {
        var value: UInt64 = 0
        while read(fd, &value, 8) < 0 && errno == EINTR {}
        close(fd)
    }
}
