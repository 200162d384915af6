import CSysmirror
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Work under way, counted, and a wait for the count to reach zero (the end of a session waits for its log
/// lines and uploads), woken when it does instead of polling. Counting is two atomics, for the hot path:
/// the wake-up is written only while someone waits.
public final class ActivityCount: Sendable {
    private let count = Atomic<Int>(0)
    private let waiting = Atomic<Bool>(false)
    /// Written when the count reaches zero while someone waits.
    private let idle: OwnedDescriptor

    public init() throws(SystemCallError) {
        idle = OwnedDescriptor(taking: try systemCall("eventfd") { sysm_eventfd() })
    }

    public var current: Int { count.load(ordering: .sequentiallyConsistent) }

    public func begin() { count.add(1, ordering: .sequentiallyConsistent) }

    public func end() {
        // Sequentially consistent on both sides: either the waiter sees zero, or this sees the waiter.
        if count.subtract(1, ordering: .sequentiallyConsistent).newValue == 0 && waiting.load(ordering: .sequentiallyConsistent) {
            var one: UInt64 = 1
            _ = write(idle.raw, &one, 8)  // an eventfd write fails only on overflow, which 2^64 ends cannot reach
        }
    }

    /// Waits until nothing is under way or `nanoseconds` have passed; true when nothing is. One waiter at
    /// a time.
    @discardableResult
    public func waitUntilIdle(nanoseconds: UInt64) -> Bool {
        let deadline = Clock.monotonic() + nanoseconds
        waiting.store(true, ordering: .sequentiallyConsistent)
        defer { waiting.store(false, ordering: .sequentiallyConsistent) }
        while current > 0 {
            let now = Clock.monotonic()
            guard now < deadline else { return false }
            var entry = pollfd(fd: idle.raw, events: Int16(POLLIN), revents: 0)
            if poll(&entry, 1, Int32(min((deadline - now) / 1_000_000 + 1, 1000))) > 0 {
                var value: UInt64 = 0
                _ = read(idle.raw, &value, 8)  // only resets the eventfd: the count itself is read above
            }
        }
        return true
    }
}
