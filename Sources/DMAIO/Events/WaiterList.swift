/// Tasks suspended until something changes in an event channel: for an event, for a message
/// of one connection, for a credit of one connection. Each is woken (its continuation resumed)
/// when what it waits for may be there; it then looks again, under the lock.
///
/// Kept in the channel's state, so that a task registers under the same lock under which the
/// state it waits on changes: no wake-up can fall between its look and its suspension.
/// Resuming a continuation only schedules its task, so it is done with the lock held.
struct WaiterList: ~Copyable {
    struct Waiter {
        let token: UInt64
        let continuation: UnsafeContinuation<Void, any Error>
    }

    private var waiters: [Waiter] = []

    var isEmpty: Bool { waiters.isEmpty }

    mutating func append(token: UInt64, _ continuation: UnsafeContinuation<Void, any Error>) {
        waiters.append(Waiter(token: token, continuation: continuation))
    }

    /// Wakes every waiter: each looks again.
    mutating func resumeAll() {
        for waiter in waiters { waiter.continuation.resume() }
        waiters.removeAll(keepingCapacity: true)
    }

    /// Wakes the oldest waiter.
    mutating func resumeFirst() {
        guard !waiters.isEmpty else { return }
        waiters.removeFirst().continuation.resume()
    }

    /// Ends every wait with `error`.
    mutating func failAll(_ error: any Error) {
        for waiter in waiters { waiter.continuation.resume(throwing: error) }
        waiters.removeAll(keepingCapacity: true)
    }

    /// Ends the wait of `token` with `error` (its task was cancelled); false when it is not
    /// waiting here (it was woken already).
    mutating func cancel(token: UInt64, with error: any Error) -> Bool {
        guard let index = waiters.firstIndex(where: { $0.token == token }) else { return false }
        waiters.remove(at: index).continuation.resume(throwing: error)
        return true
    }
}
