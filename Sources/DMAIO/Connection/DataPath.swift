import RDMAVerbs

/// What a connection's calls do under its channel's lock: send (`aio_send`), receive
/// (`aio_recv`), release (`sio_release`), and their asynchronous forms' single looks.
extension ChannelState {
    /// The core of connection `id` for `operation`; a closed and forgotten connection is an
    /// error.
    @inline(__always)
    func core(_ id: Connection.ID, for operation: String) throws(RDMAError) -> UnsafeMutablePointer<ConnectionCore> {
        guard let core = connections.core(id.rawValue) else { throw Self.closedError(id, operation) }
        return core
    }

    @inline(never)
    static func closedError(_ id: Connection.ID, _ operation: String) -> RDMAError {
        RDMAError(.notConnected, operation: operation, errno: .badFileDescriptor, message: "\(id) was closed")
    }

    // MARK: - Sending

    /// `aio_send`: posts the message at once when it can, else queues it behind the others (it
    /// goes out when a credit comes back). Throws (and the caller frees the buffer) only when
    /// the message was not taken.
    @inline(__always)
    mutating func send(_ send: ConnectionCore.PendingSend, on id: Connection.ID, area: Unmanaged<DMAArea>) throws(RDMAError) {
        let core = try core(id, for: "aio_send")
        // The common case, inline: a message of this connection's area that fits, with a credit
        // and send-queue room at hand and nothing queued ahead of it.
        if core.pointee.isArea(area), send.count <= core.pointee.peerSlotSize, try core.pointee.postAtOnce(send) { return }
        try sendOtherwise(send, core: core, area: area)
    }

    /// Every other case of ``send(_:on:area:)``, out of line: a connection that is not usable, a
    /// buffer of another area, a message too large, a sender out of credits (it pumps: credit
    /// updates may be waiting), a message that must wait in the queue.
    @inline(never)
    private mutating func sendOtherwise(_ send: ConnectionCore.PendingSend, core: UnsafeMutablePointer<ConnectionCore>, area: Unmanaged<DMAArea>) throws(RDMAError) {
        try checkSendable(send, core: core, area: area, for: "aio_send")
        // Out of credits: credit updates may be waiting in the completion queue (a poll of
        // user-mapped memory, no system call), so a sender that only sends still moves.
        if core.pointee.credits == 0 {
            try pump()
            afterChange()
            if core.pointee.status != .connected { try checkUsable(core, for: "aio_send") }
        }
        // A large message always takes the queue: its window and request are posted there.
        if send.count <= core.pointee.peerSlotSize, try core.pointee.postAtOnce(send) { return }
        core.pointee.pending.append(send)
        // The message is queued now: if the device refuses the queue's sends, the connection
        // ends, and each queued message, this one included, is reported failed by its event.
        pumpSends(core)
        afterChange()
    }

    /// The asynchronous `send(_:)`'s look: posts the message when a credit and send-queue room
    /// are at hand and nothing is queued ahead of it; false when it must wait for a credit.
    mutating func sendIfCredited(_ send: ConnectionCore.PendingSend, on id: Connection.ID, area: Unmanaged<DMAArea>) throws(RDMAError) -> Bool {
        let core = try core(id, for: "aio_send")
        try checkSendable(send, core: core, area: area, for: "aio_send")
        if send.count > core.pointee.peerSlotSize {
            // A large message: taken when a credit is at hand and nothing waits ahead of it; its
            // window and request are posted from the queue.
            if !core.pointee.canPostAtOnce {
                try pump()
                afterChange()
                if core.pointee.status != .connected { try checkUsable(core, for: "aio_send") }
                guard core.pointee.canPostAtOnce else { return false }
            }
            core.pointee.pending.append(send)
            pumpSends(core)
            afterChange()
            return true
        }
        if try core.pointee.postAtOnce(send) { return true }
        // Credit updates may be waiting in the completion queue.
        try pump()
        afterChange()
        if core.pointee.status != .connected { try checkUsable(core, for: "aio_send") }
        return try core.pointee.postAtOnce(send)
    }

    private func checkSendable(_ send: ConnectionCore.PendingSend, core: UnsafeMutablePointer<ConnectionCore>, area: Unmanaged<DMAArea>, for operation: String) throws(RDMAError) {
        if core.pointee.status != .connected { try checkUsable(core, for: operation) }
        guard core.pointee.isArea(area) else {
            throw RDMAError(.wrongArea, operation: operation, errno: .invalidArgument,
                            message: "the buffer was reserved from another area than the one \(core.pointee.id) is associated with")
        }
        guard send.count <= core.pointee.peerLargestMessage else {
            throw RDMAError(.messageTooLarge, operation: operation, errno: .messageTooLong,
                            message: "a message of \(send.count) bytes exceeds the \(core.pointee.peerLargestMessage) bytes the peer accepts at most "
                                + "(half its area by default): send smaller messages, or have the peer allocate a larger area")
        }
    }

    // MARK: - Receiving

    /// `aio_recv`: the next message of connection `id` (its slot and length), or nil when none
    /// has arrived. Throws once the connection is unusable and every message was handed out.
    @inline(__always)
    mutating func receive(_ id: Connection.ID) throws(RDMAError) -> ConnectionCore.Arrival? {
        let core = try core(id, for: "aio_recv")
        var next = core.pointee.popVisibleArrival()
        // After the peer left, too: what it sent before may still be in the queue; and while
        // the connection resumes, which the pump drives.
        if next == nil, core.pointee.status != .unassociated && core.pointee.status != .closed {
            next = try pump(handingOutTo: core) ?? core.pointee.popVisibleArrival()
            afterChange()
        }
        guard let arrival = next else {
            if core.pointee.status != .connected { try checkUsable(core, for: "aio_recv") }
            return nil
        }
        core.pointee.handedOut += 1
        core.pointee.held += 1
        if arrival.isLarge {
            core.pointee.handOutLarge(arrival)
        } else {
            core.pointee.slotHeld[arrival.slot] = true
        }
        return arrival
    }

    /// The asynchronous `nextMessage()`'s look: a message, nil when none has arrived yet, or
    /// the connection's end — ``MessageLook/end`` when the peer closed it, an error when it
    /// broke or was closed here.
    mutating func lookForMessage(_ id: Connection.ID) throws(RDMAError) -> MessageLook {
        let core = try core(id, for: "aio_recv")
        do throws(RDMAError) {
            if let arrival = try receive(id) { return .message(arrival) }
            return .nothing
        } catch {
            if core.pointee.status == .disconnected, core.pointee.failure == nil { return .end }
            throw error
        }
    }

    enum MessageLook {
        case message(ConnectionCore.Arrival)
        case nothing
        case end
    }

    /// The message ``receive(_:)`` would hand out next, after taking what the device reported
    /// when none is waiting; nil when none has arrived. Throws once the connection is unusable
    /// and every message was handed out.
    mutating func nextArrival(_ id: Connection.ID) throws(RDMAError) -> ConnectionCore.Arrival? {
        let core = try core(id, for: "aio_recv")
        if core.pointee.arrivals.isEmpty, core.pointee.status != .unassociated && core.pointee.status != .closed {
            try pump()
            afterChange()
        }
        guard core.pointee.arrivals.count > core.pointee.hiddenArrivals, let front = core.pointee.arrivals.front else {
            if core.pointee.status != .connected { try checkUsable(core, for: "aio_recv") }
            return nil
        }
        return front
    }

    /// The address of slot `slot` of connection `core` (or of a large message's block).
    @inline(__always)
    func address(ofSlot slot: Int, in core: UnsafeMutablePointer<ConnectionCore>) -> UnsafeMutableRawPointer {
        if slot < 0 { return address(ofLarge: slot, in: core) }
        return core.pointee.borrowedArea!.with { $0.address(core.pointee.slotOffsets[slot]) }
    }

    @inline(never)
    private func address(ofLarge slot: Int, in core: UnsafeMutablePointer<ConnectionCore>) -> UnsafeMutableRawPointer {
        let block = ConnectionCore.Arrival(slot: slot, length: 0).block!
        return core.pointee.borrowedArea!.with { $0.address(block) }
    }

    // MARK: - Releasing

    /// `sio_release` of one received slot: re-posted (gathered with others when the connection's
    /// slots are its own) and its credit owed to the sender.
    ///
    /// Returns the channel's hold on itself when this was the last buffer of its last, closed
    /// connection: the caller drops it once the lock is released (it may be what keeps the
    /// channel alive).
    @inline(__always)
    mutating func release(slot: Int, of raw: UInt32) -> EventChannel? {
        guard let core = connections.core(raw) else { return nil }
        if slot < 0 { return releaseLarge(slot: slot, of: raw, core: core) }
        core.pointee.held -= 1
        core.pointee.slotHeld[slot] = false
        // While the connection resumes, the slot is posted on the new queue pair (its credit
        // goes back once data flows again); before there is one, it is posted when it is made.
        guard core.pointee.status == .connected || core.pointee.status == .interrupted && core.pointee.queuePair != nil else {
            // A pool's slot goes back to the pool; a private slot waits for the connection to go.
            if let pool = core.pointee.pool { try? pool.repost(slot: slot) }
            return core.pointee.status == .closed ? forgetIfFinished(raw) : nil
        }
        do throws(RDMAError) {
            try core.pointee.repostReleased(slot: slot)
            try core.pointee.pumpSends()
        } catch {
            end(core, after: error)
            afterChange()
        }
        return nil
    }

    /// `sio_release` of a large message: its block goes back to the area, and reads waiting for
    /// room may start.
    @inline(never)
    private mutating func releaseLarge(slot: Int, of raw: UInt32, core: UnsafeMutablePointer<ConnectionCore>) -> EventChannel? {
        core.pointee.held -= 1
        core.pointee.releaseLarge(block: ConnectionCore.Arrival(slot: slot, length: 0).block!)
        guard core.pointee.isOpen else {
            return core.pointee.status == .closed ? forgetIfFinished(raw) : nil
        }
        pumpSends(core)
        afterChange()
        return nil
    }

    // MARK: - Errors

    /// Why a connection that is not connected cannot be used.
    @inline(never)
    func checkUsable(_ core: UnsafeMutablePointer<ConnectionCore>, for operation: String) throws(RDMAError) {
        let id = core.pointee.id
        switch core.pointee.status {
        case .connected, .interrupted: return
        case .unassociated:
            throw RDMAError(.notConnected, operation: operation, errno: .socketNotConnected,
                            message: "\(id) is not associated with an area yet: call associate (dma_assoc) first")
        case .disconnected:
            if let failure = core.pointee.failure {
                throw RDMAError(.disconnected, operation: operation, errno: .connectionReset,
                                message: "\(id) ended: \(failure.operation): \(failure.message)")
            }
            throw RDMAError(.disconnected, operation: operation, errno: .connectionReset,
                            message: "the peer of \(id) disconnected: open a new connection")
        case .closed:
            throw Self.closedError(id, operation)
        }
    }
}
