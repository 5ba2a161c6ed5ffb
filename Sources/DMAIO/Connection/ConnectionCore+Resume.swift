import CRDMA
import RDMAVerbs

/// What a socket connection's queue pair was brought up with (``Association``), so that a
/// replacement can be brought up the same way.
struct SocketLink {
    var gidIndex: Int
    var mtu: ibv_mtu
    /// The peer's GID and LID (its queue pair number and PSN change with each queue pair).
    var peer: QueuePairEndpoint
}

extension ConnectionCore {
    /// A connection resuming after its queue pair failed (docs/resume.md).
    ///
    /// The failed queue pair is destroyed and a new one made (at once over a socket; on the new
    /// rdma_cm id once its route is resolved); the free receive slots are posted on it. Each side
    /// then tells the other how many data messages it received since the association and how
    /// many credits it hands out on the new queue pair (``SocketHandshake/Resume`` over the
    /// socket; ``WireProtocol/ResumeRequest`` in rdma_cm's private data, see
    /// `ChannelState+ResumeOverConnectionManager.swift`); the sends the peer did not get go out
    /// again, in order, before anything queued after them. A send completed on the old queue pair was
    /// acknowledged, so it arrived; one that failed or never completed may or may not have
    /// (the acknowledgement may be what was lost): the peer's count decides. Messages arriving
    /// after this side counted are dropped — their sender sends them again — so each is
    /// handed out once, in order.
    struct Resumption {
        /// When the queue pair failed: the connection is given up
        /// ``ConnectionCore/resumeDeadline`` later if it has not resumed by then.
        let began: MonotonicInstant
        /// This side's resume, sent first; then the peer's is read.
        var exchange = SocketExchange()
        var step: Step

        enum Step {
            /// Socket: sending this side's ``SocketHandshake/Resume`` and reading the peer's.
            case exchangingCounts(packetSequenceNumber: UInt32)
            /// Socket: the new queue pair is ready to send: ready bytes are exchanged, as at the
            /// association, so that nothing reaches a queue pair that is not ready.
            case exchangingReady(peer: SocketHandshake.Resume)
            /// rdma_cm, client: a new id resolves the server's resume listener, then connects
            /// to it with this side's ``WireProtocol/ResumeRequest``.
            case resolving(ConnectionID)
            case connecting(ConnectionID)
            /// rdma_cm, client: the last try failed (the link may still be down); the next one
            /// starts then.
            case retrying(at: MonotonicInstant)
            /// rdma_cm, server: waiting for the client's resume.
            case awaitingPeer
            /// rdma_cm, server: the client's resume was accepted on a new id.
            case accepting(ConnectionID, peer: WireProtocol.ResumeRequest)
        }

        /// The new rdma_cm id this step works on, if any.
        var attempt: ConnectionID? {
            switch step {
            case .resolving(let id), .connecting(let id), .accepting(let id, _): id
            default: nil
            }
        }
    }

    /// Whether a failed queue pair may be replaced without losing anything: a socket connection,
    /// or an rdma_cm one whose server gave a resume token, with no large message between its
    /// request and its done, on either side — its window and its read are bound to the failed
    /// queue pair (for now such a connection ends).
    var canResume: Bool {
        (socketLink != nil || resumeToken != 0) && largeInFlight == 0 && awaitingDone.isEmpty && invalidating.isEmpty
            && largeReceives.isEmpty && hiddenArrivals == 0 && donesReceived == 0 && donesToReturn == 0
    }

    /// Slots that hold a message here: waiting to be handed out, or held by the program.
    private var slotsInUse: Int {
        var waiting = 0
        for index in 0..<arrivals.count where arrivals[index].slot >= 0 { waiting += 1 }
        return waiting + held - largeHeld.count
    }

    /// The credits the peer holds on a new queue pair: the grant, less the slots in use here.
    /// Credits owed to it are folded in; a slot released later hands its credit back as usual.
    var restartCredits: Int { Swift.max(0, creditsGranted - slotsInUse) }

    /// The private slots to post on a new queue pair: every slot not in use here (none for a
    /// shared pool's, whose queue outlives the queue pair).
    func freeSlots() -> [Int] {
        guard pool == nil else { return [] }
        var free = slotHeld.map { !$0 }
        for index in 0..<arrivals.count where arrivals[index].slot >= 0 { free[arrivals[index].slot] = false }
        return free.indices.filter { free[$0] }
    }

    /// The new queue pair is up: the sends the peer received (its count says which) are done —
    /// their buffers go back and they get their `.sent` — and the others go out again first, in
    /// order. Throws when the count names messages never sent or ones known delivered.
    mutating func replay(peerReceived: UInt64, into events: inout RingBuffer<Event>) throws(RDMAError) {
        let first = messagesSent &- inFlight.count
        let delivered = Int(truncatingIfNeeded: peerReceived) &- first
        guard delivered >= 0, delivered <= inFlight.count else {
            throw RDMAError(.connectionFailed, operation: "dma_assoc", errno: .protocolError,
                            message: "the peer of \(id) resumed saying it received \(peerReceived) messages, while \(first) to \(messagesSent) were possible: protocol error")
        }
        for _ in 0..<delivered {
            let send = inFlight.popFirst()!
            if send.offset >= 0 { area?.free(send.offset) }
            if send.reportsEvent { events.append(.sent(connection: id, cookie: send.cookie)) }
        }
        var again: [PendingSend] = []
        while let send = inFlight.popFirst() { again.append(send) }
        for send in again.reversed() { pending.prepend(send) }
        messagesSent = Int(truncatingIfNeeded: peerReceived)
    }

    /// An interrupted connection ends (given up, closed, or its peer gone): the sends of the
    /// failed queue pair never complete now; their buffers go back, each reported failed.
    mutating func abandonInterruptedSends(into events: inout RingBuffer<Event>) {
        while let send = inFlight.popFirst() {
            if send.offset >= 0 { area?.free(send.offset) }
            if send.reportsEvent { events.append(.sendFailed(connection: id, cookie: send.cookie, status: .flushed)) }
        }
        resumption = nil
    }
}
