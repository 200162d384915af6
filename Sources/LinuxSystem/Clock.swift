#if canImport(Glibc)
    import Glibc
#endif

/// Clock reads for the hot path: clock_gettime through the vDSO, no allocation.
public enum Clock {
    /// Nanoseconds on CLOCK_MONOTONIC, for durations.
    @inlinable
    public static func monotonic() -> UInt64 { read(CLOCK_MONOTONIC) }

    /// Nanoseconds since the Unix epoch, for timestamps.
    @inlinable
    public static func wall() -> UInt64 { read(CLOCK_REALTIME) }

    /// Turns monotonic readings into wall-clock time with one offset taken now, so that the hot path
    /// reads one clock instead of two. A later change of the wall clock does not move log timestamps.
    public struct WallFromMonotonic: Sendable {
        @usableFromInline let offset: UInt64

        public init() { offset = Clock.wall() &- Clock.monotonic() }

        @inlinable
        public func wall(at monotonic: UInt64) -> UInt64 { monotonic &+ offset }
    }

    @inlinable
    static func read(_ clock: clockid_t) -> UInt64 {
        var time = timespec()
        clock_gettime(clock, &time)
        return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
    }
}
