import CRDMA
import RDMAVerbs
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The pump: what the device and rdma_cm reported becomes the connections' state and the
/// channel's events. Lock held throughout (these are ``ChannelState``'s own methods).
extension ChannelState {
    // MARK: - Taking events

    /// `ec_next_event`: the next event, or nil when none is pending. Never blocks.
    mutating func takeEvent() throws(RDMAError) -> Event? {
        if let failure { throw failure }
        if events.isEmpty && announcements.isEmpty { try pump() }
        var event = popEvent()
        if descriptorInUse {
            // The queue may be empty now: arm it before anyone sleeps on the descriptor.
            try armIfIdle()
            if event == nil { event = popEvent() }
        }
        afterChange()
        return event
    }

    /// Arms the queue before a sleep on the descriptor; true when that found an event (then
    /// there is no need to sleep). A sleeper needs the descriptor truthful as much as a caller
    /// of ``EventChannel/fileDescriptor`` does: events another thread takes from the device
    /// meanwhile (its `receive()` or `send()` pumps) must wake it.
    mutating func prepareToSleep() throws(RDMAError) -> Bool {
        if !descriptorInUse {
            descriptorInUse = true
            updateWake()
        }
        try armIfIdle()
        return !events.isEmpty || !announcements.isEmpty
    }

    /// After a sleep on the descriptor by a caller that does not know which descriptor inside
    /// it was readable (the C ABI): takes the notification that woke it (one per arming), and
    /// looks at the rdma_cm channel and the sockets on the next pump when they were readable.
    mutating func wokeUp(_ ready: EventChannel.Readiness) throws(RDMAError) {
        if ready.contains(.connections) { lookAtConnectionEvents = true }
        // A notification waiting on the channel is taken even when the queue was not known to
        // be armed: left there, it would keep the descriptor readable (a busy loop).
        if ready.contains(.completions) {
            notificationUnread = false
            if try io.completionChannel.with({ channel throws(RDMAError) in try channel.nextEvent() }) != nil { armed = false }
        }
    }

    /// After a sleep on the descriptor that found `ready` readable: the queue's arming fired
    /// when the completion channel is among them; its notification is read later (see
    /// ``notificationUnread``).
    mutating func wokeFromSleep(_ ready: EventChannel.Readiness) {
        if ready.contains(.connections) { lookAtConnectionEvents = true }
        if ready.contains(.completions) {
            armed = false
            notificationUnread = true
        }
    }

    mutating func popEvent() -> Event? {
        if let event = events.popFirst() { return event }
        while let raw = announcements.popFirst() {
            guard let core = connections.core(raw) else { continue }
            core.pointee.inAnnouncementQueue = false
            core.pointee.announced = Swift.max(core.pointee.announced, core.pointee.handedOut)
            guard core.pointee.announced < core.pointee.arrived else {
                // Every message is announced: the end of the connection may be reported.
                if core.pointee.disconnectUnreported {
                    core.pointee.disconnectUnreported = false
                    return .disconnected(connection: core.pointee.id)
                }
                continue
            }
            let length = Int(core.pointee.arrivals[core.pointee.announced - core.pointee.handedOut].length)
            core.pointee.announced += 1
            if core.pointee.announced < core.pointee.arrived || core.pointee.disconnectUnreported { announce(core) }
            return .received(connection: core.pointee.id, length: length)
        }
        return nil
    }

    mutating func announce(_ core: UnsafeMutablePointer<ConnectionCore>) {
        guard !core.pointee.inAnnouncementQueue else { return }
        core.pointee.inAnnouncementQueue = true
        announcements.append(core.pointee.id.rawValue)
    }

    /// Keeps the eventfd readable exactly while taken events wait in the queue.
    mutating func updateWake() {
        let pending = !events.isEmpty || !announcements.isEmpty
        if pending != wakeIsSet {
            io.descriptors.with { $0.setWake(pending) }
            wakeIsSet = pending
        }
    }

    // MARK: - The pump

    /// Moves everything the device and rdma_cm have reported into the connections and the
    /// event queue.
    mutating func pump() throws(RDMAError) {
        try finishPump(found: try pollAll())
    }

    /// The rest of a pump once the completion queue is drained: the notification of an armed
    /// queue, a look at connection events when one is due. The checks are inline; what they
    /// rarely call for is not, which keeps a busy loop's code short.
    @inline(__always)
    private mutating func finishPump(found: Int) throws(RDMAError) {
        pumps &+= 1
        if found > 0 && armed || lookAtConnectionEvents || pumps & 63 == 0 {
            try finishPumpSlowly(found: found)
        }
    }

    @inline(never)
    private mutating func finishPumpSlowly(found: Int) throws(RDMAError) {
        // Completions came while armed: a notification was raised for them. Take it, so the
        // descriptor quiets; an idle, armed queue costs no system call.
        if found > 0 && armed, try io.completionChannel.with({ channel throws(RDMAError) in try channel.nextEvent() }) != nil {
            armed = false  // one notification per arming; one not raised yet is taken on wake-up
        }
        // Connection events are rare: look after a sleep ended, or every 64th time if
        // ``connectionLookInterval`` passed since the last look, and only when the descriptor
        // says one is there (rdma_get_cm_event allocates per call).
        if lookAtConnectionEvents || pumps & 63 == 0 && connectionLookIsDue() {
            lookAtConnectionEvents = false
            let connectionEvents = io.connectionEvents
            while try waitReadable(connectionEvents.with { $0.fileDescriptor }, timeout: .zero),
                  let event = try connectionEvents.with({ channel throws(RDMAError) in try channel.nextEvent() }) {
                // What the peer sent before it left completed before its end was reported: take
                // it from the queue first, so that it is kept (and reported) ahead of the end.
                if event.kind == .disconnected { _ = try pollAll() }
                handle(event)
            }
            if socketConnections > 0, try waitReadable(io.descriptors.with { $0.socketWatch }, timeout: .zero) {
                _ = try pollAll()  // as above, for a socket's end
                takeSocketEnds()
            }
        }
    }

    /// How often a busy loop, which never sleeps on the descriptor, looks at connection events
    /// (and so how late it may learn of a disconnect when the watcher thread has not yet). Each
    /// look costs a `poll` system call (docs/benchmark/latency-64B-anatomy.md).
    static let connectionLookInterval = Duration.milliseconds(5)

    /// Whether ``connectionLookInterval`` passed since the last unprompted look at connection
    /// events.
    private mutating func connectionLookIsDue() -> Bool {
        let now = MonotonicInstant.now
        guard now >= nextConnectionLook else { return false }
        nextConnectionLook = now + Self.connectionLookInterval
        return true
    }

    /// Before reporting "no event": arm the queue so that the next completion makes the
    /// descriptor readable, then poll once more, since a completion that arrived between the
    /// last poll and the arming raised no notification.
    mutating func armIfIdle() throws(RDMAError) {
        // Read before anyone sleeps: left there, it would keep the descriptor readable.
        if notificationUnread {
            notificationUnread = false
            _ = try io.completionChannel.with { channel throws(RDMAError) in try channel.nextEvent() }
        }
        guard events.isEmpty, announcements.isEmpty, !armed else { return }
        try io.completionQueue.with { queue throws(RDMAError) in try queue.requestNotification() }
        armed = true
        _ = try pollAll()
    }

    /// Polls until the completion queue is empty; returns how many completions it handled.
    mutating func pollAll() throws(RDMAError) -> Int {
        var found = 0
        while true {
            let count = try pollOnce()
            found += count
            if count < polled.count { return found }
        }
    }

    private mutating func pollOnce() throws(RDMAError) -> Int {
        let polled = polled
        let count = try io.completionQueue.with { queue throws(RDMAError) in try queue.poll(into: polled) }
        let base = UnsafePointer(polled.baseAddress!)
        for index in 0..<count { handle(base + index) }
        return count
    }

    /// One completion. It cannot fail: what goes wrong while handling it (a receive slot or a
    /// send the device refuses to take) ends that one connection, reported by its events, and
    /// the other completions of the batch, already taken from the queue, are handled all the
    /// same.
    @inline(__always)
    mutating func handle(_ completion: UnsafePointer<WorkCompletion>) {
        let requestID = completion.pointee.requestID
        let slot = Int(truncatingIfNeeded: UInt32(truncatingIfNeeded: requestID))
        let kind = ConnectionCore.kind(of: requestID)
        if kind == .sharedReceive {
            handleSharedReceive(completion, slot: slot)
            return
        }
        // A forgotten connection's flushes find none.
        let raw = ConnectionCore.connection(of: requestID)
        guard let core = connections.core(raw) else { return }
        handle(completion, kind: kind, slot: slot, core: core)
        // The caller holds a reference to the channel: its hold on itself may go here.
        if core.pointee.status == .closed { _ = forgetIfFinished(raw) }
    }

    /// ``handle(_:)`` as a call, for the busy loop's pump: completions other than the message it
    /// hands out are few on its way, and their handling need not lengthen it.
    @inline(never)
    private mutating func handleOutOfLine(_ completion: UnsafePointer<WorkCompletion>) {
        handle(completion)
    }

    /// A completion of one of `core`'s requests (not of a shared receive).
    @inline(__always)
    private mutating func handle(
        _ completion: UnsafePointer<WorkCompletion>, kind: ConnectionCore.RequestKind, slot: Int, core: UnsafeMutablePointer<ConnectionCore>
    ) {
        // A late completion of a queue pair the connection replaced: what it says is settled
        // by the resume (``ConnectionCore/Resumption``).
        guard completion.pointee.queuePairNumber == core.pointee.queuePairNumber else { return }
        // A queue pair that failed because the peer stopped answering (its retries ran out), or
        // for a reason of the link or port (soft-RoCE's "local QP operation error" when its
        // network device went down; requests flushed while the connection was connected),
        // interrupts the connection when it can resume; this completion is the failed queue
        // pair's then. Other failures (this side's protection or length errors, a peer's
        // refusal) would only fail again: they end it as before.
        if !completion.pointee.isSuccess, core.pointee.status == .connected, Self.resumes(after: completion.pointee.status), interrupt(core) {
            return
        }
        core.pointee.activity &+= 1
        switch kind {
        case .dataSend:
            core.pointee.sendQueueFree += 1
            guard let send = core.pointee.inFlight.popFirst() else { return }
            if send.window >= 0 {
                // A large message's request: its buffer stays lent until the peer's done.
                let status = completion.pointee.status
                core.pointee.requestCompleted(send, success: completion.pointee.isSuccess, into: &events, status: status)
                if !completion.pointee.isSuccess && status != .flushed { requestFailed(core, status: status, what: "a large message's request") }
                break
            }
            if send.offset >= 0 { core.pointee.borrowedArea?.with { $0.free(send.offset) } }
            if completion.pointee.isSuccess {
                if send.reportsEvent { events.append(.sent(connection: core.pointee.id, cookie: send.cookie)) }
            } else {
                let status = completion.pointee.status
                if send.reportsEvent { events.append(.sendFailed(connection: core.pointee.id, cookie: send.cookie, status: status)) }
                if status != .flushed { requestFailed(core, status: status, what: "a send") }
            }
        case .creditUpdate:
            if slot >= ConnectionCore.readSlot && slot < ConnectionCore.probeSlot {
                handleRendezvousWork(completion, slot: slot, core: core)
                break
            }
            core.pointee.sendQueueFree += 1
            if slot == ConnectionCore.probeSlot { core.pointee.probeOutstanding = false }
            if !completion.pointee.isSuccess && completion.pointee.status != .flushed {
                requestFailed(core, status: completion.pointee.status, what: slot == ConnectionCore.probeSlot ? "a keepalive probe" : "a credit update")
            }
        case .receive, .sharedReceive:
            handleReceive(completion, slot: slot, core: core)
        }
        pumpSends(core)
    }

    /// Whether a request that completed with `status` is worth a new queue pair.
    @inline(never)
    private static func resumes(after status: WorkCompletion.Status) -> Bool {
        status == .retryExceeded || status == .flushed || status == .localQueuePairOperationError
    }

    /// A completion of a large message's other work: a window's bind (seen only when it
    /// failed: it is unsignalled), an invalidation, or a read.
    @inline(never)
    private mutating func handleRendezvousWork(_ completion: UnsafePointer<WorkCompletion>, slot: Int, core: UnsafeMutablePointer<ConnectionCore>) {
        let status = completion.pointee.status
        let success = completion.pointee.isSuccess
        switch slot {
        case ConnectionCore.invalidateSlot:
            core.pointee.invalidationCompleted(success: success, status: status, into: &events)
            if !success && status != .flushed { requestFailed(core, status: status, what: "a window's invalidation") }
        case ConnectionCore.readSlot:
            guard success else {
                core.pointee.sendQueueFree += 1
                if status != .flushed { requestFailed(core, status: status, what: "the read of a large message") }
                return
            }
            do {
                if try core.pointee.readCompleted(), core.pointee.status != .unassociated { announce(core) }
            } catch {
                end(core, after: error)
            }
        default:  // a bind
            if !success && status != .flushed { requestFailed(core, status: status, what: "a window's bind") }
        }
    }

    /// A shared receive names its queue pair, not its connection.
    private mutating func handleSharedReceive(_ completion: UnsafePointer<WorkCompletion>, slot: Int) {
        let queuePairNumber = completion.pointee.queuePairNumber
        guard let owner = connectionsByQueuePair[queuePairNumber], let core = connections.core(owner),
              core.pointee.status != .closed
        else {
            // The connection closed meanwhile: the slot still belongs to the pool. (A pool whose
            // queue refuses it has failed as a whole; its connections learn it by their own.)
            try? poolsByQueuePair[queuePairNumber]?.pool?.repost(slot: slot)
            return
        }
        core.pointee.activity &+= 1
        handleReceive(completion, slot: slot, core: core)
        pumpSends(core)
    }

    @inline(__always)
    private mutating func handleReceive(_ completion: UnsafePointer<WorkCompletion>, slot: Int, core: UnsafeMutablePointer<ConnectionCore>) {
        guard completion.pointee.isSuccess else {
            let status = completion.pointee.status
            if status != .flushed && core.pointee.status == .connected {
                events.append(.receiveFailed(connection: core.pointee.id, status: status))
                requestFailed(core, status: status, what: "a receive")
            }
            // A pool's slot outlives the connection.
            if let pool = core.pointee.pool { try? pool.repost(slot: slot) }
            return
        }
        let immediate = completion.pointee.immediateData ?? 0
        let (credits, isCreditUpdate) = WireProtocol.decode(immediate: immediate)
        let dones = WireProtocol.dones(in: immediate)
        if let violation = core.pointee.creditViolation(credits: credits, dones: dones, isCreditUpdate: isCreditUpdate) {
            // Ended at the first such message; a shared pool's slot goes back at once, so that
            // the pool's other connections keep every slot they were promised.
            end(core, after: violation)
            if let pool = core.pointee.pool { try? pool.repost(slot: slot) }
            return
        }
        core.pointee.credits += credits
        if dones > 0, !core.pointee.receivedDones(dones) {
            end(core, after: RDMAError(.connectionFailed, operation: "ibv_poll_cq", errno: .protocolError,
                                       message: "the peer of \(core.pointee.id) reported more large messages read than it was lent: protocol error"))
        }
        if isCreditUpdate || core.pointee.status == .closed {
            // A credit update leaves the slot untouched.
            if core.pointee.status != .closed {
                do { try core.pointee.postReceive(slot: slot) } catch { end(core, after: error) }
            } else if let pool = core.pointee.pool {
                try? pool.repost(slot: slot)
            }
        } else if WireProtocol.isRendezvous(immediate) {
            // A large message: read into the area, shown in order once read.
            let bytes = address(ofSlot: slot, in: core)
            guard core.pointee.receivedRequest(slot: slot, count: completion.pointee.byteCount, at: bytes) else {
                end(core, after: RDMAError(.connectionFailed, operation: "ibv_poll_cq", errno: .protocolError,
                                           message: "the peer of \(core.pointee.id) sent a malformed large-message request, or one larger than the \(core.pointee.largestMessage) bytes this side accepts: protocol error"))
                // The connection is over; a shared pool's slot serves its other connections.
                if let pool = core.pointee.pool { try? pool.repost(slot: slot) }
                return
            }
        } else if core.pointee.hiddenArrivals > 0 {
            // Behind a large message not read yet: it waits, hidden, to keep the order.
            core.pointee.arrivals.append(.init(slot: slot, length: Int(completion.pointee.byteCount)))
            core.pointee.hiddenArrivals += 1
        } else {
            // Kept also before the connection is marked connected (the peer may send the moment
            // its side is established, while this side's association is still returning) and
            // after it ended (what arrived before the peer left is handed out, then the end).
            core.pointee.arrivals.append(.init(slot: slot, length: Int(completion.pointee.byteCount)))
            core.pointee.arrived += 1
            // The receive() that polled takes this message as soon as the poll is over: an
            // announcement would only be dropped when the events are taken. Before the
            // connection is marked connected, ``connected(_:)`` announces what arrived.
            if core.pointee.status != .unassociated, core.pointee.id.rawValue != receiving || core.pointee.arrivals.count > 1 {
                announce(core)
            }
        }
    }

    /// Polls the device for the ``Connection/receive()`` of connection `raw`: the first message
    /// found for it, when none waits ahead of it, is handed straight back (it never enters the
    /// connection's queue of arrivals and is not announced); every other completion is handled
    /// as ``pump()`` handles it. Nil when no message was taken that way: then one may still be
    /// queued (a shared receive), unannounced if it is the first.
    ///
    /// Should the pump fail (a later poll of it, or the look at connection events), a message
    /// taken goes back to the front of the connection's arrivals, what arrived is announced for
    /// whoever takes events next, and the failure is thrown: nothing is lost.
    @inline(__always)
    mutating func pump(handingOutTo core: UnsafeMutablePointer<ConnectionCore>) throws(RDMAError) -> ConnectionCore.Arrival? {
        var taken: ConnectionCore.Arrival? = nil
        var found = 0
        receiving = core.pointee.id.rawValue
        let polled = polled
        let queue = io.completionQueue
        do throws(RDMAError) {
            while true {
                let count = try queue.with { queue throws(RDMAError) in try queue.poll(into: polled) }
                let base = UnsafePointer(polled.baseAddress!)
                for index in 0..<count {
                    if taken == nil, let arrival = take(base + index, for: core) {
                        taken = arrival
                        receiving = 0  // later messages of the same poll are announced
                    } else {
                        handleOutOfLine(base + index)
                    }
                }
                found += count
                if count < polled.count { break }
            }
            receiving = 0
            try finishPump(found: found)
        } catch {
            receiving = 0
            if let taken { core.pointee.arrivals.prepend(taken) }
            if !core.pointee.arrivals.isEmpty { announce(core) }
            throw error
        }
        return taken
    }

    /// `completion` when it is a data message for `core` that can be handed out at once (it
    /// succeeded, and nothing arrived before it waits): its credits are counted and the message
    /// returned, as ``handleReceive(_:slot:core:)`` would queue it. Nil for anything else.
    @inline(__always)
    private mutating func take(_ completion: UnsafePointer<WorkCompletion>, for core: UnsafeMutablePointer<ConnectionCore>) -> ConnectionCore.Arrival? {
        let requestID = completion.pointee.requestID
        guard ConnectionCore.kind(of: requestID) == .receive,
              ConnectionCore.connection(of: requestID) == core.pointee.id.rawValue,
              completion.pointee.isSuccess, core.pointee.arrivals.isEmpty, core.pointee.status == .connected,
              completion.pointee.queuePairNumber == core.pointee.queuePairNumber
        else { return nil }
        let immediate = completion.pointee.immediateData ?? 0
        // Credit updates, large messages and dones take the long way, as does a message that
        // breaks the credit protocol.
        let credits = Int(immediate)
        guard immediate & ~WireProtocol.creditMask == 0, core.pointee.peerCredits > 0,
              core.pointee.credits + credits <= core.pointee.creditLimit
        else { return nil }
        core.pointee.activity &+= 1
        core.pointee.peerCredits -= 1
        core.pointee.credits += credits
        core.pointee.arrived += 1
        pumpSends(core)
        return .init(slot: Int(UInt32(truncatingIfNeeded: requestID)), length: Int(completion.pointee.byteCount))
    }

    /// Posts what `core` may send now; a refusal ends the connection.
    @inline(__always)
    mutating func pumpSends(_ core: UnsafeMutablePointer<ConnectionCore>) {
        do { try core.pointee.pumpSends() } catch { end(core, after: error) }
    }

    /// This side could not go on with a connection (the device refused a receive slot or a
    /// send): it ends as if the peer went away, and later calls on it say why.
    mutating func end(_ core: UnsafeMutablePointer<ConnectionCore>, after error: RDMAError) {
        core.pointee.failure = core.pointee.failure ?? error
        peerWentAway(core)
    }

    /// A request of a connected connection failed on the device (not flushed): the queue pair is
    /// in error, usually because the peer stopped answering (its retries ran out) or its link
    /// went down. The connection ends with that reason.
    private mutating func requestFailed(_ core: UnsafeMutablePointer<ConnectionCore>, status: WorkCompletion.Status, what: String) {
        guard core.pointee.status == .connected else { return }
        core.pointee.failure = core.pointee.failure ?? RDMAError(
            .workCompletion, operation: "ibv_poll_cq", errno: .connectionReset,
            message: "\(what) of \(core.pointee.id) failed: \(status) (the peer stopped answering, or the link to it went down): open a new connection")
        peerWentAway(core)
    }

    private mutating func handle(_ event: ConnectionEvent) {
        if event.kind == .connectRequest, let listener = event.listenerID, resumeListeners.values.contains(where: { $0.id.id == listener }) {
            takeResumeRequest(event)
            return
        }
        guard let raw = connectionsByCMID[event.id], let core = connections.core(raw) else { return }
        if core.pointee.status == .interrupted {
            resumeEvent(event, core: core)
            return
        }
        switch event.kind {
        case .disconnected, .deviceRemoval, .connectError, .unreachable, .rejected:
            peerWentAway(core)
        default:
            break
        }
    }

    /// The connection ended at the peer: completes the disconnect (rdma_cm) or flushes the queue
    /// pair (socket), fails what was not sent, reports it — after every message that arrived
    /// before it.
    mutating func peerWentAway(_ core: UnsafeMutablePointer<ConnectionCore>) {
        guard core.pointee.isOpen else { return }
        if core.pointee.status == .interrupted {
            dropAttempt(core)
            core.pointee.abandonInterruptedSends(into: &events)
        }
        core.pointee.status = .disconnected
        core.pointee.disconnectTransport()
        stopWatchingSocket(core)
        core.pointee.failPendingSends(into: &events)
        // Messages that arrived before the end are announced first: a program that closes the
        // connection on `.disconnected` has had every one of them.
        if Swift.max(core.pointee.announced, core.pointee.handedOut) < core.pointee.arrived {
            core.pointee.disconnectUnreported = true
            announce(core)
        } else {
            events.append(.disconnected(connection: core.pointee.id))
        }
    }

    /// What a connection's readable TCP socket says: nothing (a wake-up with nothing to read),
    /// an orderly close (EOF: the peer closed it, or its process ended), the peer's resume (its
    /// queue pair failed), or a failure — the TCP connection's error, or bytes a peer should not
    /// have sent — for the reason later calls give.
    private enum SocketEnd {
        case nothing, closed, resume, failed(RDMAError)
    }

    private static func socketEnd(_ socket: Int32, of id: Connection.ID) -> SocketEnd {
        var byte: UInt8 = 0
        let count = recv(socket, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
        if count == 0 { return .closed }
        if count > 0 {
            if byte == SocketHandshake.Resume.firstByte { return .resume }
            return .failed(RDMAError(.connectionFailed, operation: "dma_assoc", errno: .protocolError,
                                     message: "the peer of \(id) sent bytes on its TCP socket after the handshake (protocol error): the connection ended"))
        }
        let code = errno
        if code == EAGAIN || code == EWOULDBLOCK || code == EINTR { return .nothing }
        return .failed(RDMAError(.connectionFailed, operation: "recv", errno: Errno(rawValue: code),
                                 message: "the TCP connection under \(id) failed (\(String(cString: strerror(code)))), which ends the connection: is the peer's host reachable?"))
    }

    /// Some watched TCP socket became readable: after the handshake a peer sends nothing more on
    /// it, so that is its end (EOF when it closed or died; stray bytes are a protocol error and
    /// end the connection too).
    private mutating func takeSocketEnds() {
        let watch = io.descriptors.with { $0.socketWatch }
        // A few rounds: a socket still readable after them (a resume waiting to write, say)
        // gets its turn on the next pump.
        for _ in 0..<8 {
            let ready = withUnsafeTemporaryAllocation(of: epoll_event.self, capacity: 8) { buffer -> [UInt64] in
                let count = epoll_wait(watch, buffer.baseAddress, 8, 0)
                return (0..<Int(Swift.max(count, 0))).map { buffer[$0].data.u64 }
            }
            guard !ready.isEmpty else { return }
            for data in ready {
                if let core = connections.core(UInt32(truncatingIfNeeded: data)), core.pointee.socketWatched, let socket = core.pointee.socket {
                    if core.pointee.status == .interrupted {
                        advanceResumption(core)
                        continue
                    }
                    switch Self.socketEnd(socket, of: core.pointee.id) {
                    case .nothing: continue
                    case .closed: peerWentAway(core)
                    case .resume:
                        // The peer's queue pair failed: this side's goes too, and both resume.
                        if !interrupt(core) {
                            end(core, after: RDMAError(.connectionFailed, operation: "dma_assoc", errno: .protocolError,
                                                       message: "the peer of \(core.pointee.id) asked to resume the connection, which cannot resume now (a large message is under way): the connection ended"))
                        }
                    case .failed(let error): end(core, after: error)
                    }
                } else {
                    // No connection watches it any more: stop watching it.
                    epoll_ctl(watch, EPOLL_CTL_DEL, Int32(bitPattern: UInt32(truncatingIfNeeded: data >> 32)), nil)
                }
            }
        }
    }
}
