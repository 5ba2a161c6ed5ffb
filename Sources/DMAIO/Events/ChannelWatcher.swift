import CRDMA
import RDMAVerbs
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The library's one watcher thread: it sleeps on behalf of every suspended task, so that
/// waiting holds no thread of the caller's, and it runs the timers the library needs without the
/// program calling in.
///
/// It sleeps in one `epoll_wait` on
/// - each event channel's rdma_cm descriptor and socket watch, always: a connection event (a
///   disconnect) is taken as it comes, and wakes what waits for it;
/// - each event channel's completion channel, while tasks wait on the channel (``EventChannel``
///   arms its queue for them): then it pumps the channel, and resumes the tasks whose wait is
///   over;
/// - descriptors a task waits to become readable (``readable(_:deadline:)``): an rdma_cm channel
///   while connecting or accepting, a TCP socket during the handshake;
///
/// and wakes up for the keepalive sweep of every channel (``PeerTimeout/keepAliveInterval``)
/// and for the deadlines of those waits. A process that never creates an event channel never
/// starts it.
///
/// In the manner of swift-subprocess's Linux `AsyncIO`: one epoll thread, registrations behind
/// a lock, continuations resumed from the thread.
///
/// The corresponding C functions are `pthread_create`, `epoll_create1`, `epoll_ctl`,
/// `epoll_wait` and `eventfd`.
final class ChannelWatcher: Sendable {
    static let shared = ChannelWatcher()

    private let epoll: Int32
    /// An eventfd that interrupts the sleep when a wait with an earlier deadline comes.
    private let wake: Int32
    private let state = Locked(State())
    private let tokens = Atomic<UInt64>(0)

    private struct State: ~Copyable {
        var channels: [UInt64: WatchedChannel] = [:]
        var nextSweep = MonotonicInstant.now + PeerTimeout.keepAliveInterval
        /// Tasks waiting for a descriptor to become readable, by descriptor.
        var descriptors: [Int32: [DescriptorWait]] = [:]

        /// The keepalive sweep's time, or an earlier deadline of a wait.
        var earliestDeadline: MonotonicInstant {
            var earliest = nextSweep
            for waits in descriptors.values {
                for wait in waits { if let deadline = wait.deadline, deadline < earliest { earliest = deadline } }
            }
            return earliest
        }
    }

    private struct WatchedChannel {
        weak var channel: EventChannel?
        let descriptors: [Int32]
    }

    private struct DescriptorWait {
        let token: UInt64
        let wanted: UInt32
        let deadline: MonotonicInstant?
        let continuation: UnsafeContinuation<Bool, any Error>
    }

    /// What an epoll registration's data names (top two bits), the rest being a descriptor or
    /// a channel's token.
    private enum Kind: UInt64 {
        case wake = 0, descriptor = 1, completions = 2, connections = 3
    }

    private init() {
        epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        wake = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        precondition(epoll >= 0 && wake >= 0, "DMAIO: cannot create the watcher thread's descriptors (errno \(errno))")
        var event = epoll_event(events: EPOLLIN.rawValue, data: epoll_data_t(u64: Kind.wake.rawValue << 62))
        epoll_ctl(epoll, EPOLL_CTL_ADD, wake, &event)
        // The thread takes no signals: they stay the program's, for its own threads.
        var all = sigset_t(), previous = sigset_t()
        sigfillset(&all)
        pthread_sigmask(SIG_SETMASK, &all, &previous)
        defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
        var thread = pthread_t()
        let created = pthread_create(&thread, nil, { argument in
            Unmanaged<ChannelWatcher>.fromOpaque(argument!).takeUnretainedValue().run()
            return nil
        }, Unmanaged.passUnretained(self).toOpaque())
        precondition(created == 0, "DMAIO: cannot start the watcher thread (error \(created))")
        pthread_detach(thread)
    }

    /// A token for a channel's registration.
    func newToken() -> UInt64 { tokens.add(1, ordering: .relaxed).newValue & 0x3FFF_FFFF_FFFF_FFFF }

    // MARK: - Event channels

    /// Watches `channel`'s rdma_cm descriptor and socket watch from now on, and sweeps it for
    /// the keepalive; its completion channel is watched while tasks wait on it
    /// (``listen(to:token:_:)``).
    func register(_ channel: EventChannel) {
        let descriptors = channel.descriptors
        let token = descriptors.watcherToken
        state.withLock { state in
            state.channels[token] = WatchedChannel(
                channel: channel, descriptors: [descriptors.completionChannel, descriptors.connectionEvents, descriptors.socketWatch])
        }
        add(descriptors.completionChannel, kind: .completions, token: token, events: 0)
        add(descriptors.connectionEvents, kind: .connections, token: token, events: EPOLLIN.rawValue)
        add(descriptors.socketWatch, kind: .connections, token: token, events: EPOLLIN.rawValue)
    }

    /// Forgets a channel that goes away (before its descriptors are closed).
    func unregister(_ descriptors: ChannelDescriptors) {
        let watched = state.withLock { $0.channels.removeValue(forKey: descriptors.watcherToken) }
        for fd in watched?.descriptors ?? [] { epoll_ctl(epoll, EPOLL_CTL_DEL, fd, nil) }
    }

    /// Whether the thread wakes up for completions on `completionChannel`.
    func listen(to completionChannel: Int32, token: UInt64, _ on: Bool) {
        var event = epoll_event(events: on ? EPOLLIN.rawValue : 0, data: epoll_data_t(u64: Kind.completions.rawValue << 62 | token))
        epoll_ctl(epoll, EPOLL_CTL_MOD, completionChannel, &event)
    }

    private func add(_ fd: Int32, kind: Kind, token: UInt64, events: UInt32) {
        var event = epoll_event(events: events, data: epoll_data_t(u64: kind.rawValue << 62 | token))
        epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event)
    }

    // MARK: - Waiting for a descriptor

    /// Suspends the task until `fd` is readable (true) or `deadline` passes (false). Cancelling
    /// the task ends the wait at once with `CancellationError`.
    ///
    /// The corresponding C functions are `epoll_ctl` (`EPOLLONESHOT`) and `epoll_wait`.
    func readable(_ fd: Int32, deadline: ContinuousClock.Instant?) async throws -> Bool {
        try await ready(fd, for: EPOLLIN.rawValue | EPOLLRDHUP.rawValue, deadline: deadline)
    }

    /// Suspends the task until `fd` is writable (true) or `deadline` passes (false), as
    /// ``readable(_:deadline:)``.
    func writable(_ fd: Int32, deadline: ContinuousClock.Instant?) async throws -> Bool {
        try await ready(fd, for: EPOLLOUT.rawValue, deadline: deadline)
    }

    private func ready(_ fd: Int32, for wanted: UInt32, deadline: ContinuousClock.Instant?) async throws -> Bool {
        let token = tokens.add(1, ordering: .relaxed).newValue
        let until = deadline.map { MonotonicInstant.now + ($0 - ContinuousClock.now) }
        return try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Bool, any Error>) in
                let failure = state.withLock { state -> RDMAError? in
                    if Task.isCancelled {
                        continuation.resume(throwing: CancellationError())
                        return nil
                    }
                    // One registration per descriptor, for what all its waiters want; each goes on
                    // when it fires, and looks again.
                    let waits = state.descriptors[fd] ?? []
                    let events = waits.reduce(wanted) { $0 | $1.wanted } | EPOLLONESHOT.rawValue
                    var event = epoll_event(events: events, data: epoll_data_t(u64: Kind.descriptor.rawValue << 62 | UInt64(UInt32(bitPattern: fd))))
                    guard epoll_ctl(epoll, waits.isEmpty ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &event) == 0 else {
                        return RDMAError(.systemCall, operation: "epoll_ctl", errno: .init(rawValue: errno), message: "watching descriptor \(fd)")
                    }
                    state.descriptors[fd] = waits + [DescriptorWait(token: token, wanted: wanted, deadline: until, continuation: continuation)]
                    return nil
                }
                if let failure { continuation.resume(throwing: failure) }
                // The sleep's timeout is recomputed for the new deadline.
                if until != nil { poke() }
            }
        } onCancel: {
            let cancelled = state.withLock { state -> DescriptorWait? in
                for (fd, waits) in state.descriptors {
                    guard let index = waits.firstIndex(where: { $0.token == token }) else { continue }
                    let wait = state.descriptors[fd]!.remove(at: index)
                    if state.descriptors[fd]!.isEmpty {
                        state.descriptors[fd] = nil
                        epoll_ctl(epoll, EPOLL_CTL_DEL, fd, nil)
                    }
                    return wait
                }
                return nil
            }
            cancelled?.continuation.resume(throwing: CancellationError())
        }
    }

    private func poke() {
        var one: UInt64 = 1
        _ = Glibc.write(wake, &one, 8)
    }

    // MARK: - The thread

    private func run() {
        let capacity = 32
        let ready = UnsafeMutablePointer<epoll_event>.allocate(capacity: capacity)
        while true {
            let timeout = state.withLock { state in Self.milliseconds(until: state.earliestDeadline, from: .now) }
            let count = epoll_wait(epoll, ready, Int32(capacity), timeout)
            if count < 0 {
                if errno != EINTR { usleep(1000) }
                continue
            }
            for index in 0..<Int(count) {
                let data = ready[index].data.u64
                let payload = data & 0x3FFF_FFFF_FFFF_FFFF
                switch Kind(rawValue: data >> 62)! {
                case .wake:
                    var value: UInt64 = 0
                    _ = Glibc.read(wake, &value, 8)
                case .descriptor:
                    fire(Int32(bitPattern: UInt32(truncatingIfNeeded: payload)))
                case .completions:
                    channel(payload)?.serviceFromWatcher(.completions)
                case .connections:
                    channel(payload)?.serviceFromWatcher(.connections)
                }
            }
            runTimers()
        }
    }

    private func channel(_ token: UInt64) -> EventChannel? {
        state.withLock { $0.channels[token]?.channel }
    }

    /// `fd` became readable: every task waiting for it goes on.
    private func fire(_ fd: Int32) {
        let waits = state.withLock { state -> [DescriptorWait] in
            guard let waits = state.descriptors.removeValue(forKey: fd) else { return [] }
            epoll_ctl(epoll, EPOLL_CTL_DEL, fd, nil)
            return waits
        }
        for wait in waits { wait.continuation.resume(returning: true) }
    }

    /// Ends the waits whose deadline passed, and sweeps the channels when the keepalive is due.
    private func runTimers() {
        let now = MonotonicInstant.now
        let (expired, sweep) = state.withLock { state -> ([DescriptorWait], [EventChannel]) in
            var expired: [DescriptorWait] = []
            for (fd, waits) in state.descriptors where waits.contains(where: { $0.deadline.map { $0 <= now } ?? false }) {
                expired += waits.filter { $0.deadline.map { $0 <= now } ?? false }
                let left = waits.filter { !($0.deadline.map { $0 <= now } ?? false) }
                if left.isEmpty {
                    state.descriptors[fd] = nil
                    epoll_ctl(epoll, EPOLL_CTL_DEL, fd, nil)
                } else {
                    state.descriptors[fd] = left
                }
            }
            guard now >= state.nextSweep else { return (expired, []) }
            state.nextSweep = now + PeerTimeout.keepAliveInterval
            return (expired, state.channels.values.compactMap(\.channel))
        }
        for wait in expired { wait.continuation.resume(returning: false) }
        for channel in sweep { channel.sweepFromWatcher() }
    }

    private static func milliseconds(until deadline: MonotonicInstant, from now: MonotonicInstant) -> Int32 {
        guard deadline > now else { return 0 }
        return Int32(clamping: (deadline.nanoseconds - now.nanoseconds + 999_999) / 1_000_000)
    }
}
