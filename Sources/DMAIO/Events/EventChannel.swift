import CRDMA
import Dispatch
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
/// - `for try await event in channel` sleeps on the descriptor between events (no busy loop).
public final class EventChannel: @unchecked Sendable {
    let context: Context
    let completionChannel: CompletionChannel
    let completionQueue: CompletionQueue
    let connectionEvents: ConnectionEventChannel
    private let pollDescriptor: Int32
    private let wakeDescriptor: Int32
    /// An epoll descriptor over the TCP sockets of socket connections (inside
    /// `pollDescriptor`): one of them readable means its peer closed or died.
    private let socketWatchDescriptor: Int32
    let lock = Mutex(())
    /// Completion-queue entries not yet promised to a connection.
    @exclusivity(unchecked) private var capacityLeft: Int

    // Guarded by `lock`, which serialises every access: no dynamic exclusivity checks (see
    // ConnectionState).
    let connections = ConnectionTable()
    @exclusivity(unchecked) private var connectionsByCMID: [ConnectionID.ID: UInt32] = [:]
    /// Connections receiving through a shared pool, by queue pair number: a shared receive's
    /// completion names the queue pair, not the connection.
    @exclusivity(unchecked) private var connectionsByQueuePair: [UInt32: UInt32] = [:]
    /// The pool behind each such queue pair, kept after the connection closed so that late
    /// completions still return their slots.
    @exclusivity(unchecked) private var poolsByQueuePair: [UInt32: SharedReceivePool] = [:]
    @exclusivity(unchecked) private var events: RingBuffer<Event> = RingBuffer()
    @exclusivity(unchecked) private var announcements: RingBuffer<UInt32> = RingBuffer()
    /// Where ``pollOnceLocked()`` has the device write completions: allocated once, so that
    /// a poll checks no array for uniqueness and copies nothing.
    private let polled: UnsafeMutableBufferPointer<WorkCompletion>
    @exclusivity(unchecked) private var armed = false
    /// A sleep ended on the completion channel and its notification was not read yet: it is
    /// read before the queue is armed again, which keeps that system call off the way from a
    /// wake-up to the caller's answer.
    @exclusivity(unchecked) private var notificationUnread = false
    /// Whether someone outside may sleep on the descriptor (see ``fileDescriptor``).
    @exclusivity(unchecked) private var descriptorHandedOut = false
    /// Set after a sleep on the descriptor ended: look at the rdma_cm channel on the next pump.
    @exclusivity(unchecked) private var lookAtConnectionEvents = false
    /// The connection whose ``Connection/receive()`` is polling the device (0: none): the first
    /// message that poll finds for it is handed out by that call, so it is not announced.
    @exclusivity(unchecked) private var receiving: UInt32 = 0
    @exclusivity(unchecked) private var pumps: UInt = 0
    /// When the pump may look at connection events again without being told to (see
    /// ``connectionLookIsDue()``).
    @exclusivity(unchecked) private var nextConnectionLook = MonotonicInstant.now
    @exclusivity(unchecked) private var wakeIsSet = false
    @exclusivity(unchecked) private var nextConnection: UInt32 = 1
    /// Socket connections whose TCP socket is watched.
    @exclusivity(unchecked) private var socketConnections = 0
    @exclusivity(unchecked) private var emptyLooks: UInt = 0
    /// When ``probeQuietConnectionsLocked()`` looks next.
    @exclusivity(unchecked) var nextKeepAliveSweep = MonotonicInstant.now

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
        capacityLeft = completionQueue.capacity
        let epoll = try minusOneOrErrno("epoll_create1", "creating the event channel's descriptor") { epoll_create1(Int32(EPOLL_CLOEXEC)) }
        let wake = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard wake >= 0 else {
            close(epoll)
            throw RDMAError(.systemCall, operation: "eventfd", errno: .init(rawValue: errno), message: "creating the event channel's wake descriptor")
        }
        let sockets = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard sockets >= 0 else {
            close(epoll)
            close(wake)
            throw RDMAError(.systemCall, operation: "epoll_create1", errno: .init(rawValue: errno), message: "creating the event channel's socket watch")
        }
        pollDescriptor = epoll
        wakeDescriptor = wake
        socketWatchDescriptor = sockets
        // Allocated once everything that can fail without running deinit has succeeded.
        polled = .allocate(capacity: 32)
        polled.initialize(repeating: WorkCompletion())
        for fd in [completionChannel.fileDescriptor, connectionEvents.fileDescriptor, wake, sockets] {
            var event = epoll_event(events: EPOLLIN.rawValue, data: epoll_data_t(fd: fd))
            if epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) != 0 {
                // Every stored property is set: throwing now runs deinit, which closes them.
                throw RDMAError(.systemCall, operation: "epoll_ctl", errno: .init(rawValue: errno), message: "watching descriptor \(fd)")
            }
        }
        try completionQueue.requestNotification()
        armed = true
    }

    deinit {
        polled.deallocate()
        close(pollDescriptor)
        close(wakeDescriptor)
        close(socketWatchDescriptor)
    }

    /// The descriptor for poll/epoll (`ec_to_fd`): readable while events are pending.
    ///
    /// Once the descriptor has been handed out, ``next()`` keeps it truthful: it arms the
    /// completion queue whenever it reports no event, and keeps an eventfd readable while taken
    /// events wait. Before that, a program that only polls pays no system call for it.
    public var fileDescriptor: Int32 {
        lock.withLock { _ in
            if !descriptorHandedOut {
                descriptorHandedOut = true
                updateWakeLocked()
            }
        }
        return pollDescriptor
    }

    /// The name of the device the channel's completion queue lives on.
    public var deviceName: String { context.deviceName }

    // MARK: - Taking events

    /// The next event, or nil when none is pending — `ec_next_event`. Never blocks.
    ///
    /// The corresponding C functions are `ibv_poll_cq`, `ibv_get_cq_event`,
    /// `ibv_req_notify_cq` and `rdma_get_cm_event`.
    public func next() throws(RDMAError) -> Event? {
        try lock.withLock { _ throws(RDMAError) -> Event? in
            if events.isEmpty && announcements.isEmpty { try pumpLocked() }
            var event = popLocked()
            // Every 16th empty look, quiet connections may be probed (a clock read; a sender that
            // drains its events after each send looks once per message).
            if event == nil {
                emptyLooks &+= 1
                if emptyLooks & 15 == 0 { probeQuietConnectionsLocked() }
            }
            if descriptorHandedOut {
                // The queue may be empty now: arm it before anyone sleeps on the descriptor.
                try armIfIdleLocked()
                if event == nil { event = popLocked() }
                updateWakeLocked()
            }
            return event
        }
    }

    /// Arms the queue before a sleep on the descriptor; true when that found an event (then
    /// there is no need to sleep).
    ///
    /// A sleeper on the descriptor needs it truthful as much as a caller of ``fileDescriptor``
    /// does: events that another thread takes from the device meanwhile (its `receive()` or
    /// `send()` pumps the channel) must wake it.
    private func prepareToSleep() throws(RDMAError) -> Bool {
        try lock.withLock { _ throws(RDMAError) -> Bool in
            if !descriptorHandedOut {
                descriptorHandedOut = true
                updateWakeLocked()
            }
            try armIfIdleLocked()
            return !events.isEmpty || !announcements.isEmpty
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
        try lock.withLock { _ throws(RDMAError) in
            if ready.contains(.connections) { lookAtConnectionEvents = true }
            // A notification waiting on the channel is taken even when the queue was not known
            // to be armed: left there, it would keep the descriptor readable (a busy loop).
            if ready.contains(.completions) {
                notificationUnread = false
                if try completionChannel.nextEvent() != nil { armed = false }
            }
        }
    }

    /// Sleeps on the descriptor up to `timeout`; says which descriptors inside it are readable.
    ///
    /// The corresponding C function is `epoll_wait`.
    private func sleep(timeout: Duration?) throws(RDMAError) -> Readiness {
        let milliseconds: Int32 = timeout.map { Int32(clamping: $0.milliseconds) } ?? -1
        let completions = completionChannel.fileDescriptor, wake = wakeDescriptor
        let (count, ready) = withUnsafeTemporaryAllocation(of: epoll_event.self, capacity: 4) { buffer -> (Int32, Readiness) in
            let count = epoll_wait(pollDescriptor, buffer.baseAddress, 4, milliseconds)
            var ready: Readiness = []
            for index in 0..<Int(Swift.max(count, 0)) {
                let fd = buffer[index].data.fd
                if fd == completions { ready.insert(.completions) } else if fd != wake { ready.insert(.connections) }
            }
            return (count, ready)
        }
        if count < 0 && errno != EINTR {
            throw RDMAError(.systemCall, operation: "epoll_wait", errno: .init(rawValue: errno), message: "waiting on the event channel")
        }
        return ready
    }

    /// Waits up to `timeout` (forever when nil) for an event — `ec_delay`. Nil on timeout.
    ///
    /// The corresponding C functions are `epoll_wait` and those of ``next()``.
    public func wait(timeout: Duration?) throws(RDMAError) -> Event? {
        let clock = ContinuousClock()
        let deadline = timeout.map { clock.now + $0 }
        while true {
            if let event = try next() { return event }
            if try prepareToSleep() { continue }
            let remaining = deadline.map { Swift.max($0 - clock.now, .zero) }
            if let remaining, remaining == .zero { return nil }
            // Wake up for the keepalive sweep at least every interval. Connection events are
            // looked at when their descriptor woke the sleep, or when the nap ran out (then the
            // quiet connections are probed too); a wake-up for completions alone costs no look
            // (a poll() system call), and the sweep still runs from every 16th empty next().
            let nap = remaining.map { Swift.min($0, PeerTimeout.keepAliveInterval) } ?? PeerTimeout.keepAliveInterval
            let ready = try sleep(timeout: nap)
            if ready.isEmpty { try wokeUp(.all) } else { wokeFromSleep(ready) }
        }
    }

    /// After a sleep on the descriptor that found `ready` readable: the queue's arming fired
    /// when the completion channel is among them; its notification is read later (see
    /// ``notificationUnread``).
    private func wokeFromSleep(_ ready: Readiness) {
        lock.withLock { _ in
            if ready.contains(.connections) { lookAtConnectionEvents = true }
            if ready.contains(.completions) {
                armed = false
                notificationUnread = true
            }
        }
    }

    private func popLocked() -> Event? {
        if let event = events.popFirst() { return event }
        while let raw = announcements.popFirst() {
            var event: Event? = nil
            connections.withConnection(raw) { state in
                state.inAnnouncementQueue = false
                state.announced = Swift.max(state.announced, state.handedOut)
                guard state.announced < state.arrived else {
                    // Every message is announced: the end of the connection may be reported.
                    if state.disconnectUnreported {
                        state.disconnectUnreported = false
                        event = .disconnected(connection: state.id)
                    }
                    return
                }
                let length = Int(state.arrivals[state.announced - state.handedOut].length)
                state.announced += 1
                if state.announced < state.arrived || state.disconnectUnreported { announceLocked(state) }
                event = .received(connection: state.id, length: length)
            }
            if let event { return event }
        }
        return nil
    }

    private func announceLocked(_ state: ConnectionState) {
        guard !state.inAnnouncementQueue else { return }
        state.inAnnouncementQueue = true
        announcements.append(state.id.rawValue)
    }

    /// Keeps the eventfd readable exactly while taken events wait in the queue.
    private func updateWakeLocked() {
        let pending = !events.isEmpty || !announcements.isEmpty
        if pending && !wakeIsSet {
            var one: UInt64 = 1
            _ = Glibc.write(wakeDescriptor, &one, 8)
            wakeIsSet = true
        } else if !pending && wakeIsSet {
            var value: UInt64 = 0
            _ = Glibc.read(wakeDescriptor, &value, 8)
            wakeIsSet = false
        }
    }

    /// Moves everything the device and rdma_cm have reported into the connections and the
    /// event queue. Lock held.
    func pumpLocked() throws(RDMAError) {
        try finishPumpLocked(found: try pollAllLocked())
    }

    /// The rest of a pump once the completion queue is drained: the notification of an armed
    /// queue, a look at connection events when one is due, the wake descriptor. The checks are
    /// inline; what they rarely call for is not, which keeps a busy loop's code short.
    @inline(__always)
    private func finishPumpLocked(found: Int) throws(RDMAError) {
        pumps &+= 1
        if found > 0 && armed || lookAtConnectionEvents || pumps & 63 == 0 || descriptorHandedOut {
            try finishPumpSlowlyLocked(found: found)
        }
    }

    @inline(never)
    private func finishPumpSlowlyLocked(found: Int) throws(RDMAError) {
        // Completions came while armed: a notification was raised for them. Take it, so the
        // descriptor quiets; an idle, armed queue costs no system call.
        if found > 0 && armed, try completionChannel.nextEvent() != nil {
            armed = false  // one notification per arming; one not raised yet is taken on wake-up
        }
        // Connection events are rare: look after a sleep ended, or every 64th time if
        // ``connectionLookInterval`` passed since the last look, and only when the descriptor
        // says one is there (rdma_get_cm_event allocates per call).
        if lookAtConnectionEvents || pumps & 63 == 0 && connectionLookIsDue() {
            lookAtConnectionEvents = false
            while try waitReadable(connectionEvents.fileDescriptor, timeout: .zero), let event = try connectionEvents.nextEvent() {
                // What the peer sent before it left completed before its end was reported: take
                // it from the queue first, so that it is kept (and reported) ahead of the end.
                if event.kind == .disconnected { _ = try pollAllLocked() }
                handleLocked(event)
            }
            if socketConnections > 0, try waitReadable(socketWatchDescriptor, timeout: .zero) {
                _ = try pollAllLocked()  // as above, for a socket's end
                takeSocketEndsLocked()
            }
            probeQuietConnectionsLocked()
        }
        // Events taken here (also from receive and send) must show on a watched descriptor.
        if descriptorHandedOut { updateWakeLocked() }
    }

    /// How often a busy loop, which never sleeps on the descriptor, looks at connection events
    /// (and so how late it may learn of a disconnect). Each look costs a `poll` system call, a
    /// few microseconds under emulation: every 64th pump took about 3% of a polling `pingpong`'s
    /// samples, once a millisecond about one `poll` per 7 round trips of a 64 B ping-pong and per
    /// 4 messages of a 4 KiB stream's receiver; every 5 ms a fifth of that.
    static let connectionLookInterval = Duration.milliseconds(5)

    /// Whether ``connectionLookInterval`` passed since the last unprompted look at connection
    /// events.
    private func connectionLookIsDue() -> Bool {
        let now = MonotonicInstant.now
        guard now >= nextConnectionLook else { return false }
        nextConnectionLook = now + Self.connectionLookInterval
        return true
    }

    /// Before reporting "no event": arm the queue so that the next completion makes the
    /// descriptor readable, then poll once more, since a completion that arrived between the
    /// last poll and the arming raised no notification.
    private func armIfIdleLocked() throws(RDMAError) {
        // Read before anyone sleeps: left there, it would keep the descriptor readable.
        if notificationUnread {
            notificationUnread = false
            _ = try completionChannel.nextEvent()
        }
        guard events.isEmpty, announcements.isEmpty, !armed else { return }
        try completionQueue.requestNotification()
        armed = true
        _ = try pollAllLocked()
    }

    /// Polls until the completion queue is empty; returns how many completions it handled.
    private func pollAllLocked() throws(RDMAError) -> Int {
        var found = 0
        while true {
            let count = try pollOnceLocked()
            found += count
            if count < polled.count { return found }
        }
    }

    private func pollOnceLocked() throws(RDMAError) -> Int {
        let count = try completionQueue.poll(into: polled)
        let base = UnsafePointer(polled.baseAddress!)
        for index in 0..<count { handleLocked(base + index) }
        return count
    }

    /// One completion. It cannot fail: what goes wrong while handling it (a receive slot or a
    /// send the device refuses to take) ends that one connection, reported by its events, and
    /// the other completions of the batch, already taken from the queue, are handled all the
    /// same.
    @inline(__always)
    private func handleLocked(_ completion: UnsafePointer<WorkCompletion>) {
        let requestID = completion.pointee.requestID
        let slot = Int(truncatingIfNeeded: UInt32(truncatingIfNeeded: requestID))
        let kind = ConnectionState.kind(of: requestID)
        if kind == .sharedReceive {
            handleSharedReceiveLocked(completion, slot: slot)
            return
        }
        // A closed connection's flushes find none.
        connections.withConnection(ConnectionState.connection(of: requestID)) { state in
            handleLocked(completion, kind: kind, slot: slot, state: state)
        }
    }

    /// A completion of one of `state`'s requests (not of a shared receive).
    @inline(__always)
    private func handleLocked(_ completion: UnsafePointer<WorkCompletion>, kind: ConnectionState.RequestKind, slot: Int, state: ConnectionState) {
        state.activity &+= 1
        switch kind {
        case .dataSend:
            state.sendQueueFree += 1
            guard let send = state.inFlight.popFirst() else { return }
            if send.offset >= 0 { state.area?.free(send.offset) }
            if completion.pointee.isSuccess {
                events.append(.sent(connection: state.id, cookie: send.cookie))
            } else {
                let status = completion.pointee.status
                events.append(.sendFailed(connection: state.id, cookie: send.cookie, status: status))
                if status != .flushed { peerWentAwayLocked(state) }  // the queue pair is in error
            }
        case .creditUpdate:
            state.sendQueueFree += 1
            if slot == ConnectionState.probeSlot { state.probeOutstanding = false }
            if !completion.pointee.isSuccess && completion.pointee.status != .flushed { peerWentAwayLocked(state) }
        case .receive, .sharedReceive:
            handleReceiveLocked(completion, slot: slot, state: state)
        }
        pumpSendsLocked(state)
    }

    /// ``handleLocked(_:)`` as a call, for the busy loop's pump: completions other than the
    /// message it hands out are few on its way, and their handling need not lengthen it.
    @inline(never)
    private func handleOutOfLineLocked(_ completion: UnsafePointer<WorkCompletion>) {
        handleLocked(completion)
    }

    /// A shared receive names its queue pair, not its connection.
    private func handleSharedReceiveLocked(_ completion: UnsafePointer<WorkCompletion>, slot: Int) {
        let queuePairNumber = completion.pointee.queuePairNumber
        guard let owner = connectionsByQueuePair[queuePairNumber], let state = connections[owner] else {
            // The connection closed meanwhile: the slot still belongs to the pool. (A pool whose
            // queue refuses it has failed as a whole; its connections learn it by their own.)
            try? poolsByQueuePair[queuePairNumber]?.repost(slot: slot)
            return
        }
        state.activity &+= 1
        handleReceiveLocked(completion, slot: slot, state: state)
        pumpSendsLocked(state)
    }

    @inline(__always)
    private func handleReceiveLocked(_ completion: UnsafePointer<WorkCompletion>, slot: Int, state: ConnectionState) {
        guard completion.pointee.isSuccess else {
            let status = completion.pointee.status
            if status != .flushed && state.status == .connected {
                events.append(.receiveFailed(connection: state.id, status: status))
                peerWentAwayLocked(state)  // the queue pair is in error
            }
            // A pool's slot outlives the connection.
            if let pool = state.pool { try? pool.repost(slot: slot) }
            return
        }
        let (credits, isCreditUpdate) = WireProtocol.decode(immediate: completion.pointee.immediateData ?? 0)
        state.credits += credits
        if isCreditUpdate || state.status == .closed {
            // A credit update leaves the slot untouched.
            do { try state.postReceive(slot: slot) } catch { endLocked(state, after: error) }
        } else {
            // Kept also before the connection is marked connected (the peer may send the moment
            // its side is established, while this side's association is still returning) and
            // after it ended (what arrived before the peer left is handed out, then the end).
            state.arrivals.append(.init(slot: Int32(slot), length: Int32(completion.pointee.byteCount)))
            state.arrived += 1
            // The receive() that polled takes this message as soon as the poll is over: an
            // announcement would only be dropped when the events are taken. Before the
            // connection is marked connected, ``connected(_:)`` announces what arrived.
            if state.status != .unassociated, state.id.rawValue != receiving || state.arrivals.count > 1 { announceLocked(state) }
        }
    }

    /// Polls the device for `state`'s ``Connection/receive()``: the first message found for it,
    /// when none waits ahead of it, is handed straight back (it never enters the connection's
    /// queue of arrivals and is not announced); every other completion is handled as
    /// ``pumpLocked()`` handles it. Nil when no message was taken that way: then one may still
    /// be queued (a shared receive), unannounced if it is the first.
    ///
    /// Should the pump fail (a later poll of it, or the look at connection events), a message
    /// taken goes back to the front of the connection's arrivals, what arrived is announced for
    /// whoever takes events next, and the failure is thrown: nothing is lost.
    @inline(__always)
    func pumpLocked(handingOutTo state: ConnectionState) throws(RDMAError) -> ConnectionState.Arrival? {
        var taken: ConnectionState.Arrival? = nil
        var found = 0
        receiving = state.id.rawValue
        do throws(RDMAError) {
            while true {
                let count = try completionQueue.poll(into: polled)
                let base = UnsafePointer(polled.baseAddress!)
                for index in 0..<count {
                    if taken == nil, let arrival = takeLocked(base + index, for: state) {
                        taken = arrival
                        receiving = 0  // later messages of the same poll are announced
                    } else {
                        handleOutOfLineLocked(base + index)
                    }
                }
                found += count
                if count < polled.count { break }
            }
            receiving = 0
            try finishPumpLocked(found: found)
        } catch {
            receiving = 0
            if let taken { state.arrivals.prepend(taken) }
            if !state.arrivals.isEmpty { announceLocked(state) }
            throw error
        }
        return taken
    }

    /// `completion` when it is a data message for `state` that can be handed out at once (it
    /// succeeded, and nothing arrived before it waits): its credits are counted and the message
    /// returned, as ``handleReceiveLocked(_:slot:state:)`` would queue it. Nil for anything else.
    @inline(__always)
    private func takeLocked(_ completion: UnsafePointer<WorkCompletion>, for state: ConnectionState) -> ConnectionState.Arrival? {
        let requestID = completion.pointee.requestID
        guard ConnectionState.kind(of: requestID) == .receive,
            ConnectionState.connection(of: requestID) == state.id.rawValue,
            completion.pointee.isSuccess, state.arrivals.isEmpty, state.status == .connected
        else { return nil }
        let (credits, isCreditUpdate) = WireProtocol.decode(immediate: completion.pointee.immediateData ?? 0)
        guard !isCreditUpdate else { return nil }
        state.activity &+= 1
        state.credits += credits
        state.arrived += 1
        pumpSendsLocked(state)
        return .init(slot: Int32(truncatingIfNeeded: requestID), length: Int32(completion.pointee.byteCount))
    }

    /// A completion that someone else polled from the channel's queue (``VerbsBaseline``),
    /// handled as if the pump had found it.
    package func handle(polled completion: UnsafePointer<WorkCompletion>) {
        lock.withLock { _ in
            handleLocked(completion)
            if descriptorHandedOut { updateWakeLocked() }
        }
    }

    /// Posts what `state` may send now; a refusal ends the connection.
    @inline(__always)
    private func pumpSendsLocked(_ state: ConnectionState) {
        do { try state.pumpSends() } catch { endLocked(state, after: error) }
    }

    /// This side could not go on with a connection (the device refused a receive slot or a
    /// send): it ends as if the peer went away, and later calls on it say why.
    func endLocked(_ state: ConnectionState, after error: RDMAError) {
        state.failure = state.failure ?? error
        peerWentAwayLocked(state)
        if descriptorHandedOut { updateWakeLocked() }
    }

    private func handleLocked(_ event: ConnectionEvent) {
        guard let raw = connectionsByCMID[event.id], let state = connections[raw] else { return }
        switch event.kind {
        case .disconnected, .deviceRemoval, .connectError, .unreachable, .rejected:
            peerWentAwayLocked(state)
        default:
            break
        }
    }

    /// The connection ended at the peer: completes the disconnect (rdma_cm) or flushes the queue
    /// pair (socket), fails what was not sent, reports it.
    private func peerWentAwayLocked(_ state: ConnectionState) {
        guard state.status == .connected else { return }
        state.status = .disconnected
        state.disconnectTransport()
        stopWatchingSocketLocked(state)
        state.failPendingSends(into: &events)
        // Messages that arrived before the end are announced first: a program that closes the
        // connection on `.disconnected` has had every one of them.
        if Swift.max(state.announced, state.handedOut) < state.arrived {
            state.disconnectUnreported = true
            announceLocked(state)
        } else {
            events.append(.disconnected(connection: state.id))
        }
    }

    /// Some watched TCP socket became readable: after the handshake a peer sends nothing more on
    /// it, so that is its end (EOF when it closed or died; stray bytes are a protocol error and
    /// end the connection too).
    private func takeSocketEndsLocked() {
        var ready = [epoll_event](repeating: epoll_event(), count: 8)
        while true {
            let count = epoll_wait(socketWatchDescriptor, &ready, Int32(ready.count), 0)
            guard count > 0 else { return }
            for index in 0..<Int(count) {
                guard let state = connections[ready[index].data.u32] else { continue }
                peerWentAwayLocked(state)
            }
        }
    }

    private func stopWatchingSocketLocked(_ state: ConnectionState) {
        guard let socket = state.socket, state.socketWatched else { return }
        state.socketWatched = false
        socketConnections -= 1
        epoll_ctl(socketWatchDescriptor, EPOLL_CTL_DEL, socket, nil)
    }

    // MARK: - Connections

    func register(_ endpoint: ConnectionState.Endpoint) -> ConnectionState {
        lock.withLock { _ in
            let id = Connection.ID(rawValue: nextConnection)
            nextConnection = nextConnection == 0x3FFF_FFFF ? 1 : nextConnection + 1
            let state = ConnectionState(id: id, channel: self, endpoint: endpoint)
            connections[id.rawValue] = state
            return state
        }
    }

    /// Claims completion-queue room for a connection's queues.
    func reserveCapacity(_ entries: Int) throws(RDMAError) {
        try lock.withLock { _ throws(RDMAError) in
            guard entries <= capacityLeft else {
                throw RDMAError(.invalidArgument, operation: "dma_assoc", errno: .noSpace,
                                message: "the event channel's completion queue has room for \(capacityLeft) more entries, "
                                    + "this association needs \(entries): create the EventChannel with a larger capacity or use fewer receive slots")
            }
            capacityLeft -= entries
            // Each completion makes at most one event: with room for as many as the queues can
            // hold, a program that takes its events never makes the queue grow (allocate).
            events.reserveCapacity(completionQueue.capacity - capacityLeft + 16)
        }
    }

    func returnCapacity(_ entries: Int) {
        lock.withLock { _ in capacityLeft += entries }
    }

    /// Marks a connection established and routes its rdma_cm events here.
    func connected(_ state: ConnectionState) throws(RDMAError) {
        try state.cmID?.migrate(to: connectionEvents)
        try lock.withLock { _ throws(RDMAError) in
            switch state.endpoint {
            case .connectionManager(let cmID):
                connectionsByCMID[cmID.id] = state.id.rawValue
            case .socket(let socket):
                var event = epoll_event(events: EPOLLIN.rawValue | EPOLLRDHUP.rawValue, data: epoll_data_t(u32: state.id.rawValue))
                guard epoll_ctl(socketWatchDescriptor, EPOLL_CTL_ADD, socket, &event) == 0 else {
                    throw RDMAError(.systemCall, operation: "epoll_ctl", errno: .init(rawValue: errno),
                                    message: "watching the TCP socket \(socket) for its peer's end")
                }
                state.socketWatched = true
                socketConnections += 1
            }
            state.status = .connected
            events.append(.connected(connection: state.id))
            // Messages that arrived while the association was completing follow its event.
            if !state.arrivals.isEmpty { announceLocked(state) }
            if descriptorHandedOut { updateWakeLocked() }
        }
    }

    /// Routes shared receives of `queuePairNumber` to `state`.
    func attach(_ state: ConnectionState, queuePairNumber: UInt32, pool: SharedReceivePool) {
        lock.withLock { _ in
            connectionsByQueuePair[queuePairNumber] = state.id.rawValue
            poolsByQueuePair[queuePairNumber] = pool
        }
    }

    /// Forgets a connection that is being closed.
    func unregister(_ state: ConnectionState) {
        lock.withLock { _ in
            connections[state.id.rawValue] = nil
            if let cmID = state.cmID { connectionsByCMID[cmID.id] = nil }
            stopWatchingSocketLocked(state)
            if let number = state.queuePair?.number, connectionsByQueuePair[number] == state.id.rawValue {
                connectionsByQueuePair[number] = nil
            }
        }
    }

    /// A received slot comes back: re-post it (gathered with others when the connection's slots
    /// are its own) and owe the sender a credit.
    ///
    /// Inlined into `sio_release`, like the re-post below it: it runs for every message, and
    /// under emulation a call costs as much as a few dozen instructions
    /// (docs/benchmark/latency-64B-anatomy.md).
    ///
    /// Returns the reference a closed state kept for its buffers once this was the last one
    /// (``ConnectionState/endKeepingIfDone()``): the caller drops it when done with the state.
    @inline(__always)
    @discardableResult
    func release(slot: Int, of state: ConnectionState) -> ConnectionState? {
        lock.withLock { _ -> ConnectionState? in
            state.held -= 1
            guard state.status == .connected else {
                // A pool's slot goes back to the pool; a private slot waits for the state to go.
                if let pool = state.pool { try? pool.repost(slot: slot) }
                return state.endKeepingIfDone()
            }
            do throws(RDMAError) {
                try state.repostReleased(slot: slot)
                try state.pumpSends()
            } catch {
                endLocked(state, after: error)
            }
            return nil
        }
    }

    /// The next event, sleeping on the descriptor (not a thread) while there is none.
    func nextEvent() async throws -> Event? {
        while !Task.isCancelled {
            let event: Event?
            do { event = try next() } catch { throw error as any Error }
            if let event { return event }
            do {
                if try prepareToSleep() { continue }
            } catch { throw error as any Error }
            await readable()
            do { try wokeUp() } catch { throw error as any Error }
        }
        throw CancellationError()
    }

    /// Waits until the descriptor is readable, without holding a thread.
    func readable() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let source = DispatchSource.makeReadSource(fileDescriptor: pollDescriptor, queue: Self.watcher)
            // Cancelling inside the handler prevents any further call: the continuation is
            // resumed exactly once.
            source.setEventHandler {
                source.cancel()
                continuation.resume()
            }
            source.resume()
        }
    }

    private static let watcher = DispatchQueue(label: "DMAIO.EventChannel.watcher")
}

extension EventChannel: AsyncSequence {
    public typealias Element = Event

    /// Events as they come; sleeps on ``fileDescriptor`` between them.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let channel: EventChannel

        public mutating func next() async throws -> Event? {
            try await channel.nextEvent()
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(channel: self) }
}
