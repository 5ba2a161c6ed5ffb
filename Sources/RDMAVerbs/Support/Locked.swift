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
package struct Locked<Value: ~Copyable>: ~Copyable {
    #if DMAIO_PTHREAD_LOCKS
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let value: UnsafeMutablePointer<Value>

    package init(_ initial: consuming sending Value) {
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
    @inline(__always)
    package borrowing func withLock<Result: ~Copyable, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value.pointee)
    }
    #else
    private let mutex: Mutex<Value>

    package init(_ initial: consuming sending Value) { mutex = Mutex(initial) }

    /// Runs `body` with the value, the lock held.
    @inline(__always)
    package borrowing func withLock<Result: ~Copyable, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        try mutex.withLock(body)
    }
    #endif
}

// The value is reached only through the lock.
extension Locked: @unchecked Sendable where Value: ~Copyable {}
