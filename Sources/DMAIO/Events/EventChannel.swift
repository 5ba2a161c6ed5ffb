import CRDMA
import RDMAVerbs
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// An event channel — the proposal's `ec_create`: where the results of asynchronous sends and
/// receives, and connection changes, come back.
///
/// Underneath: a completion queue on a completion channel (`ibv_create_comp_channel`,
/// `ibv_create_cq`) shared by the queue pairs of every connection on the channel, and an
/// rdma_cm event channel for their connection events.
///
/// - ``next()`` (`ec_next_event`) never blocks and allocates nothing in steady state: it polls
///   the user-mapped completion queue first (no system call), then connection events.
/// - ``fileDescriptor`` (`ec_to_fd`) is one descriptor for poll/epoll, readable while events
///   are pending: an epoll descriptor over the completion channel, the rdma_cm channel and an
///   eventfd that the library keeps readable while events it already took are queued. After
///   draining, the queue is re-armed (`ibv_req_notify_cq`) and polled once more, so a completion
///   that raced the arming is not missed. Level-triggered loops work as they are.
/// - ``wait(timeout:)`` (`ec_delay`) blocks on that descriptor, then drains.
/// - `for try await event in channel` suspends the task (no thread is held) until an event
///   comes; cancelling the task ends the wait at once. The library's one watcher thread
///   (``ChannelWatcher``) sleeps on the channel for every task that waits on it.
///
/// The channel is also the unit of serialisation: its state sits behind one lock, which every
/// call on it and on its connections takes. Threads may share a channel; channels share
/// nothing.
///
/// The watcher thread also runs the keepalive (see ``PeerTimeout``) every two seconds and
/// notices connection events (a disconnect) as they come, without the program calling in.
public final class EventChannel: Sendable {
    let context: Context
    let completionChannel: CompletionChannel
    let completionQueue: CompletionQueue
    let connectionEvents: ConnectionEventChannel
    let descriptors: ChannelDescriptors
    /// Everything the channel's lock guards.
    let state: Locked<ChannelState>
    /// Identifies each suspended task, for its cancellation.
    private let waitTokens = Atomic<UInt64>(0)

    /// Creates a channel on an RDMA device (the first by default).
    ///
    /// - Parameters:
    ///   - capacity: completion-queue entries shared by the channel's connections; each
    ///     association takes what its queues can hold at once, and fails clearly when too
    ///     little is left.
    ///   - device: the device's name; connections on the channel must run over it.
    ///
    /// The corresponding C calls are `ibv_create_comp_channel`, `ibv_create_cq`,
    /// `rdma_create_event_channel`, `epoll_create1` and `eventfd`.
    public init(capacity: Int = 8192, device: String? = nil) throws(RDMAError) {
        context = try Context.connectionManagerContext(deviceName: device)
        completionChannel = try CompletionChannel(context: context)
        completionQueue = try CompletionQueue(context: context, capacity: capacity, channel: completionChannel)
        connectionEvents = try ConnectionEventChannel()
        descriptors = try ChannelDescriptors(completionChannel: completionChannel.fileDescriptor, connectionEvents: connectionEvents.fileDescriptor)
        state = Locked(ChannelState(io: ChannelIO(
            completionQueue: Borrowed(completionQueue), completionChannel: Borrowed(completionChannel),
            connectionEvents: Borrowed(connectionEvents), descriptors: Borrowed(descriptors))))
        try completionQueue.requestNotification()
        state.withLock { $0.armed = true }
        ChannelWatcher.shared.register(self)
    }

    deinit {
        ChannelWatcher.shared.unregister(descriptors)
    }

    /// The descriptor for poll/epoll (`ec_to_fd`): readable while events are pending.
    ///
    /// Once the descriptor has been handed out, ``next()`` keeps it truthful: it arms the
    /// completion queue whenever it reports no event, and keeps an eventfd readable while taken
    /// events wait. Before that, a program that only polls pays no system call for it.
    public var fileDescriptor: Int32 {
        state.withLock { state in
            if !state.descriptorInUse {
                state.descriptorInUse = true
                state.updateWake()
            }
        }
        return descriptors.poll
    }

    /// The name of the device the channel's completion queue lives on.
    public var deviceName: String { context.deviceName }

    // MARK: - Taking events

    /// The next event, or nil when none is pending — `ec_next_event`. Never blocks.
    ///
    /// The corresponding C functions are `ibv_poll_cq`, `ibv_get_cq_event`,
    /// `ibv_req_notify_cq` and `rdma_get_cm_event`.
    public func next() throws(RDMAError) -> Event? {
        try state.withLock { state throws(RDMAError) -> Event? in try state.takeEvent() }
    }

    /// Waits up to `timeout` (forever when nil) for an event — `ec_delay`. Nil on timeout.
    ///
    /// The corresponding C functions are `epoll_wait` and those of ``next()``.
    public func wait(timeout: Duration?) throws(RDMAError) -> Event? {
        let clock = ContinuousClock()
        let deadline = timeout.map { clock.now + $0 }
        while true {
            if let event = try next() { return event }
            if try state.withLock({ state throws(RDMAError) -> Bool in try state.prepareToSleep() }) { continue }
            let remaining = deadline.map { Swift.max($0 - clock.now, .zero) }
            if let remaining, remaining == .zero { return nil }
            // A wake-up for completions alone costs no look at connection events (a poll()
            // system call); the watcher thread looks at them as they come.
            let ready = try descriptors.sleep(timeout: remaining)
            state.withLock { $0.wokeFromSleep(ready) }
        }
    }

    /// Which of the descriptors inside ``fileDescriptor`` a sleep found readable.
    package struct Readiness: OptionSet, Sendable {
        package let rawValue: UInt8
        package init(rawValue: UInt8) { self.rawValue = rawValue }
        /// The completion channel: the armed queue has a completion.
        package static let completions = Readiness(rawValue: 1)
        /// The rdma_cm channel or a watched TCP socket.
        package static let connections = Readiness(rawValue: 2)
        package static let all: Readiness = [.completions, .connections]
    }

    /// After a sleep on the descriptor: takes the notification that woke it (one per arming),
    /// and looks at the rdma_cm channel and the sockets on the next pump when they were
    /// readable. For callers that sleep on ``fileDescriptor`` inside a descriptor of their own
    /// (the C ABI), who do not know which was readable.
    ///
    /// The corresponding C functions are `ibv_get_cq_event` and `ibv_ack_cq_events`.
    package func wokeUp(_ ready: Readiness = .all) throws(RDMAError) {
        try state.withLock { state throws(RDMAError) in try state.wokeUp(ready) }
    }

    /// A completion that someone else polled from the channel's queue (``VerbsBaseline``),
    /// handled as if the pump had found it.
    package func handle(polled completion: UnsafePointer<WorkCompletion>) {
        let copy = completion.pointee
        state.withLock { state in
            withUnsafePointer(to: copy) { state.handle($0) }
            state.afterChange()
        }
    }

    // MARK: - Waiting without a thread

    /// Suspends the task until `wait` may be satisfied; the caller then looks again. Cancelling
    /// the task ends the wait at once with `CancellationError`.
    func suspend(until wait: ChannelState.Wait) async throws {
        let token = waitTokens.add(1, ordering: .relaxed).newValue
        try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Void, any Error>) in
                state.withLock { $0.register(wait, token: token, continuation) }
            }
        } onCancel: {
            state.withLock { $0.cancel(wait, token: token) }
        }
    }

    /// The next event, suspending the task (not a thread) while there is none.
    func nextEvent() async throws -> Event? {
        while true {
            try Task.checkCancellation()
            if let event = try next() { return event }
            try await suspend(until: .event)
        }
    }

    /// The watcher thread found one of the channel's descriptors readable.
    func serviceFromWatcher(_ ready: Readiness) {
        state.withLock { $0.serviceFromWatcher(ready) }
    }

    /// The keepalive sweep, from the watcher thread (see ``PeerTimeout``).
    func sweepFromWatcher() {
        state.withLock { state in
            state.probeQuietConnections()
            // Closed connections wait for their sends' completions (flushed) before they go:
            // a channel nobody calls any more still lets them go.
            if state.failure == nil, state.hasClosingConnections { try? state.pump() }
            state.afterChange()
        }
    }

    // MARK: - Connections

    /// Registers a connection made on this channel.
    func register(_ endpoint: ConnectionCore.Endpoint) -> Connection.ID {
        state.withLock { $0.register(endpoint, channel: self) }
    }

    /// Claims completion-queue room for a connection's queues.
    func reserveCapacity(_ entries: Int, for id: Connection.ID) throws(RDMAError) {
        try state.withLock { state throws(RDMAError) in try state.reserveCapacity(entries, for: id) }
    }

    /// Marks a connection established and routes its rdma_cm events here.
    func connected(_ id: Connection.ID, cmID: ConnectionID?) throws(RDMAError) {
        try cmID?.migrate(to: connectionEvents)
        try state.withLock { state throws(RDMAError) in try state.connected(id) }
    }

    /// A server connection's resume token and resume listener's port (see
    /// ``ChannelState/prepareResume(_:localAddress:)``).
    func prepareResume(_ id: Connection.ID, localAddress: SocketAddress?) -> (token: UInt64, port: UInt16)? {
        state.withLock { $0.prepareResume(id, localAddress: localAddress) }
    }

    /// Closes connection `id` (see ``ChannelState/close(_:)``).
    func close(_ id: Connection.ID) {
        let kept = state.withLock { state in
            let kept = state.close(id)
            state.afterChange()
            return kept
        }
        // Dropped without the lock: it may be the last reference to the channel.
        withExtendedLifetime(kept) {}
    }

    /// A received slot comes back (``ReceivedBuffer/release()``, `sio_release`). Returns the
    /// channel's hold on itself when that was the last of it: the caller drops it after the
    /// call.
    @inline(__always)
    func release(slot: Int, of connection: UInt32) -> EventChannel? {
        state.withLock { $0.release(slot: slot, of: connection) }
    }
}

extension EventChannel: AsyncSequence {
    public typealias Element = Event

    /// Events as they come; the task is suspended between them (no thread is held), and
    /// cancelling it ends the wait at once (with `CancellationError`).
    public struct AsyncIterator: AsyncIteratorProtocol {
        let channel: EventChannel

        public mutating func next() async throws -> Event? {
            try await channel.nextEvent()
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(channel: self) }
}
