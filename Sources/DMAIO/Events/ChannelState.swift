import CRDMA
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

/// The verbs objects and descriptors of an ``EventChannel`` that its state works with, borrowed
/// from the channel, which owns them and outlives its state.
struct ChannelIO {
    let completionQueue: Borrowed<CompletionQueue>
    let completionChannel: Borrowed<CompletionChannel>
    let connectionEvents: Borrowed<ConnectionEventChannel>
    let descriptors: Borrowed<ChannelDescriptors>
}

/// Everything an ``EventChannel``'s lock guards: the events waiting to be taken, every
/// connection's data-path state (``ConnectionCore``, in the ``ConnectionRegistry``), the
/// bookkeeping of the completion queue's notifications, and the tasks waiting on the channel.
///
/// The channel holds it in a ``Locked``, so the compiler sees that every access holds the lock;
/// its parts are fields of a value, so no access pays for a dynamic exclusivity check.
///
/// The methods are split by concern: this file holds the connections' registration and the
/// waiters; `CompletionDispatch.swift` the pump that turns completions into state and events;
/// `DataPath.swift` what the connections' calls do.
struct ChannelState: ~Copyable {
    let io: ChannelIO
    /// Completion-queue entries not yet promised to a connection.
    var capacityLeft: Int
    var connections = ConnectionRegistry()
    var nextConnection: UInt32 = 1
    var connectionsByCMID: [ConnectionID.ID: UInt32] = [:]
    /// The resume listeners of this channel's rdma_cm server connections, one per local
    /// address while such connections are open (how many), and those connections by resume
    /// token (``prepareResume(_:localAddress:)``).
    var resumeListeners: [String: (id: ConnectionID, users: Int)] = [:]
    var connectionsByToken: [UInt64: UInt32] = [:]
    /// Connections receiving through a shared pool, by queue pair number: a shared receive's
    /// completion names the queue pair, not the connection.
    var connectionsByQueuePair: [UInt32: UInt32] = [:]
    /// The pool behind each such queue pair, kept after the connection closed so that late
    /// completions still return their slots — weakly: a pool nothing else holds (its
    /// connections gone, the program done with it) goes, and its slots with it.
    var poolsByQueuePair: [UInt32: WeakPool] = [:]

    struct WeakPool {
        weak var pool: SharedReceivePool?
    }
    var events = RingBuffer<Event>()
    /// Connections with a `.received` (or a deferred `.disconnected`) to report, in order.
    var announcements = RingBuffer<UInt32>()
    var armed = false
    /// A sleep ended on the completion channel and its notification was not read yet: it is
    /// read before the queue is armed again, which keeps that system call off the way from a
    /// wake-up to the caller's answer.
    var notificationUnread = false
    /// Whether someone may sleep on the channel's descriptor (``EventChannel/fileDescriptor``
    /// was handed out, or a `wait` sleeps on it): then the eventfd inside it is kept readable
    /// while taken events wait.
    var descriptorInUse = false
    var wakeIsSet = false
    /// Set after a sleep on the descriptor ended: look at the rdma_cm channel on the next pump.
    var lookAtConnectionEvents = false
    /// The connection whose ``Connection/receive()`` is polling the device (0: none): the first
    /// message that poll finds for it is handed out by that call, so it is not announced.
    var receiving: UInt32 = 0
    var pumps: UInt = 0
    /// When the pump may look at connection events again without being told to.
    var nextConnectionLook = MonotonicInstant.now
    /// Socket connections whose TCP socket is watched.
    var socketConnections = 0
    /// When ``probeQuietConnections()`` looks next.
    var nextKeepAliveSweep = MonotonicInstant.now
    /// Tasks waiting for an event (`for try await event in channel`).
    var eventWaiters = WaiterList()
    /// Connections with tasks waiting for a message or a credit.
    var waitingConnections: [UInt32] = []
    /// Whether the watcher thread sleeps on the completion channel for this channel's waiters.
    var watcherListens = false
    /// The device failed the channel (polling its completion queue failed): every call and
    /// every wait ends with this.
    var failure: RDMAError?
    /// The channel itself while it holds connections: buffers handed out hold it unretained
    /// (no reference counting per message), and this keeps it alive for them.
    var keptAlive: EventChannel?
    /// Where a poll has the device write completions: allocated once, so that a poll checks no
    /// array for uniqueness and copies nothing.
    let polled: UnsafeMutableBufferPointer<WorkCompletion>

    init(io: ChannelIO) {
        self.io = io
        capacityLeft = io.completionQueue.with { $0.capacity }
        polled = .allocate(capacity: 32)
        polled.initialize(repeating: WorkCompletion())
    }

    deinit {
        polled.deallocate()
    }

    // MARK: - Connections

    /// Registers a new connection; returns its identifier.
    mutating func register(_ endpoint: ConnectionCore.Endpoint, channel: EventChannel) -> Connection.ID {
        var raw = nextConnection
        // Identifiers wrap after 2^30 - 1 (30 bits of a work request identifier): skip any still
        // in use.
        while connections.core(raw) != nil { raw = raw == 0x3FFF_FFFF ? 1 : raw + 1 }
        nextConnection = raw == 0x3FFF_FFFF ? 1 : raw + 1
        let id = Connection.ID(rawValue: raw)
        _ = connections.insert(ConnectionCore(id: id, endpoint: endpoint))
        if keptAlive == nil { keptAlive = channel }
        return id
    }

    /// Claims completion-queue room for a connection's queues.
    mutating func reserveCapacity(_ entries: Int, for id: Connection.ID) throws(RDMAError) {
        guard entries <= capacityLeft else {
            throw RDMAError(.invalidArgument, operation: "dma_assoc", errno: .noSpace,
                            message: "the event channel's completion queue has room for \(capacityLeft) more entries, "
                                + "this association needs \(entries): create the EventChannel with a larger capacity or use fewer receive slots")
        }
        capacityLeft -= entries
        connections.core(id.rawValue)?.pointee.capacityTaken += entries
        // Each completion makes at most one event: with room for as many as the queues can
        // hold, a program that takes its events never makes the queue grow (allocate).
        let capacity = io.completionQueue.with { $0.capacity }
        events.reserveCapacity(capacity - capacityLeft + 16)
    }

    /// Marks a connection established and routes its rdma_cm events (or its socket's end) here.
    mutating func connected(_ id: Connection.ID) throws(RDMAError) {
        guard let core = connections.core(id.rawValue), core.pointee.status == .unassociated else {
            throw RDMAError(.notConnected, operation: "dma_assoc", errno: .badFileDescriptor, message: "\(id) was closed while it was being associated")
        }
        switch core.pointee.endpoint {
        case .connectionManager(let cmID):
            connectionsByCMID[cmID.id] = id.rawValue
        case .socket(let socket):
            var event = epoll_event(
                events: EPOLLIN.rawValue | EPOLLRDHUP.rawValue,
                data: epoll_data_t(u64: UInt64(UInt32(bitPattern: socket)) << 32 | UInt64(id.rawValue)))
            guard epoll_ctl(io.descriptors.with { $0.socketWatch }, EPOLL_CTL_ADD, socket, &event) == 0 else {
                throw RDMAError(.systemCall, operation: "epoll_ctl", errno: .init(rawValue: errno),
                                message: "watching the TCP socket \(socket) for its peer's end")
            }
            core.pointee.socketWatched = true
            socketConnections += 1
        }
        core.pointee.status = .connected
        events.append(.connected(connection: id))
        // Messages that arrived while the association was completing follow its event.
        if !core.pointee.arrivals.isEmpty { announce(core) }
        afterChange()
    }

    /// Routes shared receives of `queuePairNumber` to connection `id`.
    mutating func attach(_ id: Connection.ID, queuePairNumber: UInt32, pool: SharedReceivePool) {
        connectionsByQueuePair[queuePairNumber] = id.rawValue
        // Entries of pools that went are dropped here (an association, not the data path).
        poolsByQueuePair = poolsByQueuePair.filter { $0.value.pool != nil }
        poolsByQueuePair[queuePairNumber] = WeakPool(pool: pool)
    }

    /// Closes connection `id`: disconnects it, fails its queued sends and ends its waits, and
    /// forgets it once every buffer it handed out is back and every send it posted completed.
    /// Returns what the caller drops once the lock is released: the channel's hold on itself
    /// when it was the last connection.
    mutating func close(_ id: Connection.ID) -> EventChannel? {
        guard let core = connections.core(id.rawValue), core.pointee.status != .closed else { return nil }
        let wasConnected = core.pointee.isOpen
        // The sends of a failed queue pair never complete now.
        if core.pointee.status == .interrupted {
            dropAttempt(core)
            core.pointee.abandonInterruptedSends(into: &events)
        }
        forgetResumeToken(core)
        core.pointee.status = .closed
        if wasConnected { core.pointee.disconnectTransport() }
        stopWatchingSocket(core)
        core.pointee.failPendingSends(into: &events)
        // Messages that arrived and were never handed out go back to a shared pool now.
        if let pool = core.pointee.pool {
            while let arrival = core.pointee.arrivals.popFirst() {
                if arrival.slot >= 0 {
                    try? pool.repost(slot: Int(arrival.slot))
                } else if let block = arrival.block {
                    core.pointee.area?.free(block)  // a large message read, never handed out
                }
                // An unread large message's slot and block are given back at teardown, once the
                // queue pair is gone (its read may still be running).
            }
            core.pointee.hiddenArrivals = 0
        }
        if let cmID = core.pointee.cmID { connectionsByCMID[cmID.id] = nil }
        if let number = core.pointee.queuePair?.number, connectionsByQueuePair[number] == id.rawValue {
            connectionsByQueuePair[number] = nil
        }
        capacityLeft += core.pointee.capacityTaken
        core.pointee.capacityTaken = 0
        core.pointee.pool?.unclaim(core.pointee.poolSlotsClaimed)
        core.pointee.poolSlotsClaimed = 0
        let closed = RDMAError(.notConnected, operation: "close", errno: .badFileDescriptor, message: "\(id) was closed")
        core.pointee.messageWaiters.failAll(closed)
        core.pointee.creditWaiters.failAll(closed)
        forgetReports(of: id.rawValue)
        return forgetIfFinished(id.rawValue)
    }

    /// Drops what the channel would still report of a closed connection, but its sends'
    /// completions: its `.connected`, `.received` and `.disconnected` (nobody takes its messages
    /// any more), so that a program that never takes the channel's events does not collect them.
    private mutating func forgetReports(of raw: UInt32) {
        if !events.isEmpty {
            var kept = RingBuffer<Event>(capacity: events.count)
            while let event = events.popFirst() {
                switch event {
                case .connected(let connection), .disconnected(let connection), .receiveFailed(let connection, _),
                     .interrupted(let connection), .resumed(let connection):
                    if connection.rawValue != raw { kept.append(event) }
                default:
                    kept.append(event)
                }
            }
            swap(&events, &kept)
        }
        if !announcements.isEmpty {
            var kept = RingBuffer<UInt32>(capacity: announcements.count)
            while let connection = announcements.popFirst() {
                if connection != raw { kept.append(connection) }
            }
            swap(&announcements, &kept)
        }
    }

    /// Takes a closed connection out of the registry once it is finished (see
    /// ``ConnectionCore/isFinished``); the channel lets go of itself after its last connection.
    ///
    /// Returns the channel's hold on itself after its last connection: the caller drops it once
    /// the lock is released (it may be the last reference to the channel).
    mutating func forgetIfFinished(_ raw: UInt32) -> EventChannel? {
        guard let core = connections.core(raw), core.pointee.isFinished else { return nil }
        waitingConnections.removeAll { $0 == raw }
        connections.remove(raw)
        guard connections.isEmpty else { return nil }
        defer { keptAlive = nil }
        return keptAlive
    }

    mutating func stopWatchingSocket(_ core: UnsafeMutablePointer<ConnectionCore>) {
        guard let socket = core.pointee.socket, core.pointee.socketWatched else { return }
        core.pointee.socketWatched = false
        socketConnections -= 1
        epoll_ctl(io.descriptors.with { $0.socketWatch }, EPOLL_CTL_DEL, socket, nil)
    }

    // MARK: - Waiters

    /// What a suspended task waits for.
    enum Wait {
        /// Any event of the channel.
        case event
        /// A message of a connection, or its end.
        case message(UInt32)
        /// Room to send on a connection (a credit, nothing queued ahead), or its end.
        case credit(UInt32)
    }

    var hasWaiters: Bool { !eventWaiters.isEmpty || !waitingConnections.isEmpty }

    /// Whether a closed connection waits for its sends to complete before it goes.
    var hasClosingConnections: Bool {
        connections.identifiers.contains { connections.core($0)?.pointee.status == .closed }
    }

    /// Suspends the task of `continuation` until `wait` may be satisfied, or resumes it at once
    /// when it may be already (the caller looks again either way). Called with the lock held,
    /// the moment after the caller found nothing: nothing can change in between.
    mutating func register(_ wait: Wait, token: UInt64, _ continuation: UnsafeContinuation<Void, any Error>) {
        if let failure { return continuation.resume(throwing: failure) }
        // The task's cancellation handler may have run before the task got here, and found
        // nothing to cancel.
        if Task.isCancelled { return continuation.resume(throwing: CancellationError()) }
        switch wait {
        case .event:
            guard events.isEmpty, announcements.isEmpty else { return continuation.resume() }
            eventWaiters.append(token: token, continuation)
        case .message(let raw):
            guard let core = connections.core(raw), !Self.messageIsReady(core) else { return continuation.resume() }
            core.pointee.messageWaiters.append(token: token, continuation)
            if !waitingConnections.contains(raw) { waitingConnections.append(raw) }
        case .credit(let raw):
            guard let core = connections.core(raw), !Self.creditIsReady(core) else { return continuation.resume() }
            core.pointee.creditWaiters.append(token: token, continuation)
            if !waitingConnections.contains(raw) { waitingConnections.append(raw) }
        }
        // Arms the queue for the watcher, and takes what raced the arming (which may wake this
        // very waiter).
        afterChange()
    }

    /// Ends the wait of `token` with `CancellationError` (its task was cancelled), if it still
    /// waits.
    mutating func cancel(_ wait: Wait, token: UInt64) {
        let error = CancellationError()
        switch wait {
        case .event:
            _ = eventWaiters.cancel(token: token, with: error)
        case .message(let raw):
            _ = connections.core(raw)?.pointee.messageWaiters.cancel(token: token, with: error)
        case .credit(let raw):
            _ = connections.core(raw)?.pointee.creditWaiters.cancel(token: token, with: error)
        }
    }

    private static func messageIsReady(_ core: UnsafeMutablePointer<ConnectionCore>) -> Bool {
        !core.pointee.arrivals.isEmpty || core.pointee.hasEnded
    }

    private static func creditIsReady(_ core: UnsafeMutablePointer<ConnectionCore>) -> Bool {
        core.pointee.canPostAtOnce || core.pointee.hasEnded
    }

    /// After anything that may have changed what tasks wait for, or the events a sleeper on the
    /// descriptor waits for: wakes the waiters whose wait may be over, keeps the queue armed for
    /// the others, and keeps the descriptor truthful. Two checks when nobody waits or sleeps.
    @inline(__always)
    mutating func afterChange() {
        if hasWaiters { serveWaiters() }
        if descriptorInUse { updateWake() }
    }

    @inline(never)
    private mutating func serveWaiters() {
        wakeWaiters()
        // Whoever took the last notification (a thread's own pump) did not arm the queue again:
        // the watcher sleeps on it for the waiters left, so it is armed, and polled once more
        // for what raced the arming.
        var rounds = 0
        while hasWaiters, !armed, failure == nil, rounds < 4 {
            rounds += 1
            do throws(RDMAError) {
                try io.completionQueue.with { queue throws(RDMAError) in try queue.requestNotification() }
                armed = true
                if try pollAll() > 0 {
                    wakeWaiters()
                    // Completions that raced the arming may have raised the notification: it is
                    // taken when the watcher wakes up for it.
                }
            } catch {
                fail(with: error)
            }
        }
        if hasWaiters, !watcherListens {
            watcherListens = true
            io.descriptors.with { $0.listenForCompletions(true) }
        }
    }

    /// Resumes the waiters whose wait may be over; they look again.
    private mutating func wakeWaiters() {
        if !eventWaiters.isEmpty, !events.isEmpty || !announcements.isEmpty { eventWaiters.resumeAll() }
        var index = 0
        while index < waitingConnections.count {
            let raw = waitingConnections[index]
            guard let core = connections.core(raw) else {
                waitingConnections.remove(at: index)
                continue
            }
            if !core.pointee.messageWaiters.isEmpty, Self.messageIsReady(core) { core.pointee.messageWaiters.resumeAll() }
            if !core.pointee.creditWaiters.isEmpty, Self.creditIsReady(core) { core.pointee.creditWaiters.resumeAll() }
            if core.pointee.messageWaiters.isEmpty && core.pointee.creditWaiters.isEmpty {
                waitingConnections.remove(at: index)
            } else {
                index += 1
            }
        }
    }

    /// The device failed the channel: every wait ends with `error`, and so does every later one.
    mutating func fail(with error: RDMAError) {
        failure = failure ?? error
        eventWaiters.failAll(error)
        for raw in waitingConnections {
            connections.core(raw)?.pointee.messageWaiters.failAll(error)
            connections.core(raw)?.pointee.creditWaiters.failAll(error)
        }
        waitingConnections.removeAll()
    }

    /// The watcher thread woke up for this channel: `ready` says which of its descriptors were
    /// readable.
    mutating func serviceFromWatcher(_ ready: EventChannel.Readiness) {
        if ready.contains(.connections) { lookAtConnectionEvents = true }
        if ready.contains(.completions) {
            notificationUnread = false
            do throws(RDMAError) {
                if try io.completionChannel.with({ channel throws(RDMAError) in try channel.nextEvent() }) != nil { armed = false }
            } catch {
                fail(with: error)
            }
        }
        if failure == nil {
            do throws(RDMAError) { try pump() } catch { fail(with: error) }
        }
        if failure != nil {
            // A failed channel is not pumped any more: its descriptors would keep the watcher
            // awake for nothing.
            ChannelWatcher.shared.unregister(io.descriptors.with { $0 })
            return
        }
        if !hasWaiters, watcherListens, ready.contains(.completions) {
            // Nobody waits any more: stop waking the watcher for completions (until a task waits).
            watcherListens = false
            io.descriptors.with { $0.listenForCompletions(false) }
        }
        afterChange()
    }
}
