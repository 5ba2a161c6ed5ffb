import Synchronization

#if DMAIO_PTHREAD_LOCKS
#if canImport(Glibc)
import Glibc
#endif
#endif

/// A value that only its lock gives access to: the state a lock guards lives inside it, so the
/// compiler checks that every access holds the lock.
///
/// It is `Synchronization.Mutex`, except in a build for ThreadSanitizer: TSan on Linux does not
/// see `Mutex` (it locks with a bare futex), and reports every access it orders as a race. Built
/// with `-Xswiftc -DDMAIO_PTHREAD_LOCKS` (`scripts/sanitize` does that) the lock is a
/// `pthread_mutex_t`, which TSan understands, so that what it reports means something.
///
/// It is public, and its calls `@inlinable`, so that the modules above specialise them for their
/// own state: Swift 6.3 does not inline a `package` function into another module, and called as
/// an unspecialised generic, every `withLock` asked the runtime for `Mutex<Value>`'s metadata (a
/// locked cache lookup: about 2,900 instructions a 64 B round trip, docs/async-api.md).
public struct Locked<Value: ~Copyable>: ~Copyable {
    #if DMAIO_PTHREAD_LOCKS
    @usableFromInline let mutex: UnsafeMutablePointer<pthread_mutex_t>
    @usableFromInline let value: UnsafeMutablePointer<Value>

    @inlinable
    public init(_ initial: consuming sending Value) {
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        value = .allocate(capacity: 1)
        value.initialize(to: initial)
    }

    deinit {
        value.deinitialize(count: 1)
        value.deallocate()
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with the value, the lock held.
    @inlinable @inline(__always)
    public borrowing func withLock<Result: ~Copyable, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value.pointee)
    }
    #else
    @usableFromInline let mutex: Mutex<Value>

    @inlinable
    public init(_ initial: consuming sending Value) { mutex = Mutex(initial) }

    /// Runs `body` with the value, the lock held.
    @inlinable @inline(__always)
    public borrowing func withLock<Result: ~Copyable, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        try mutex.withLock(body)
    }
    #endif
}

// The value is reached only through the lock.
extension Locked: @unchecked Sendable where Value: ~Copyable {}
