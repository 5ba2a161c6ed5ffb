#if canImport(Glibc)
import Glibc
#endif

/// The monotonic clock as plain nanoseconds, for timing each iteration of a measured loop.
///
/// `ContinuousClock.now` and the `Duration` arithmetic that follows it cost a few hundred
/// instructions (128-bit multiplications and divisions); a loop that stamps every round trip
/// should pay for the clock read alone and do the arithmetic after the loop.
///
/// The corresponding C function is `clock_gettime(CLOCK_MONOTONIC)`.
public enum MonotonicClock {
    @inline(__always)
    public static func nanoseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) &* 1_000_000_000 &+ UInt64(now.tv_nsec)
    }
}
