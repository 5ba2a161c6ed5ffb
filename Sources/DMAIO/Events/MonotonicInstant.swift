#if canImport(Glibc)
import Glibc
#endif

/// A point on the monotonic clock as plain nanoseconds, for the checks the pump makes while a
/// busy loop spins (is a connection look or a keepalive sweep due?).
///
/// `ContinuousClock.Instant` is a type of another module: comparing and adding go through its
/// witness tables, a few calls each time. Here a comparison is one instruction, and reading the
/// clock costs the C call alone.
struct MonotonicInstant: Comparable {
    var nanoseconds: UInt64

    /// The corresponding C function is `clock_gettime(CLOCK_MONOTONIC)`.
    @inline(__always)
    static var now: MonotonicInstant {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return MonotonicInstant(nanoseconds: UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec))
    }

    @inline(__always)
    static func < (left: MonotonicInstant, right: MonotonicInstant) -> Bool { left.nanoseconds < right.nanoseconds }

    /// `instant` moved `duration` (at least 0) later.
    static func + (instant: MonotonicInstant, duration: Duration) -> MonotonicInstant {
        let (seconds, attoseconds) = duration.components
        let nanoseconds = UInt64(Swift.max(0, seconds)) &* 1_000_000_000 &+ UInt64(Swift.max(0, attoseconds / 1_000_000_000))
        return MonotonicInstant(nanoseconds: instant.nanoseconds &+ nanoseconds)
    }
}
