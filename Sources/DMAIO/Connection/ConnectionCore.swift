import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

/// The data-path state of one connection: its status, credits, queued and posted sends, the
/// messages it received and the tasks waiting on it.
///
/// It lives inside its event channel's ``ChannelState`` (in the ``ConnectionRegistry``), which
/// only the channel's lock gives access to: a ``Connection``, and the buffers it hands out, name
/// it by identifier and reach it through that lock. Non-copyable: its queues own their storage,
/// and ``tearDown()`` gives the area back what the connection held.
struct ConnectionCore: ~Copyable {
    enum Status: Equatable {
        /// Resolved or requested, not yet associated (or being associated).
        case unassociated
        /// Associated and established: data flows.
        case connected
        /// The queue pair failed and a new one is being brought up with the peer
        /// (``Resumption``): sends queue, nothing is lost; ``PeerTimeout/resumeDeadline`` bounds it.
        case interrupted
        /// The peer went away or the connection broke.
        case disconnected
        /// Closed by this side.
        case closed
    }

    struct PendingSend {
        /// The buffer's block in the area, or -1 once it went back. An inline send's block, too,
        /// is kept until the send completes: a resumed connection sends it again when the peer
        /// did not get it (``Resumption``).
        var offset: Int
        var count: Int
        var cookie: UInt64
        /// Whether its completion is reported on the event channel (`send(_:cookie:)`) or only
        /// returns the buffer (the async `send(_:)`, whose caller learned of it when it returned).
        var reportsEvent: Bool
        /// A rendezvous send (larger than the peer's slot): the window lent for it, and its key.
        var window: Int32 = -1
        var key: UInt32 = 0
    }

    /// A received message in order: a slot, or a large message (read into a block of the area).
    /// `slot` is the slot's number; ``largeUnread`` for a large message whose read has not
    /// completed; `-2 - offset` for one read into the block at `offset`.
    struct Arrival {
        var slot: Int
        var length: Int

        static let largeUnread = -1
        static func large(block: Int) -> Int { -2 - block }
        var isLarge: Bool { slot < 0 }
        /// The block of a large message that was read (nil for a slot or an unread one).
        var block: Int? { slot <= -2 ? -2 - slot : nil }
    }

    /// A rendezvous request received: the peer's buffer, and where it is read to.
    struct LargeReceive {
        /// The slot the request arrived in: held until the read completes, then re-posted, its
        /// credit owed with the done.
        var requestSlot: Int32
        var length: Int
        var address: UInt64
        var key: UInt32
        /// The block it is read into, once its first read is posted.
        var block = -1
        /// Bytes whose read is posted (a message larger than ``ConnectionCore/readPiece`` takes
        /// several reads).
        var posted = 0
        /// Reads it takes.
        func reads(of piece: Int) -> Int { (length + piece - 1) / piece }
    }

    /// How the connection was made, and so how it is torn down and how its end is noticed.
    enum Endpoint: Sendable {
        /// Through rdma_cm: the id moves the queue pair through its states; disconnects arrive
        /// as rdma_cm events.
        case connectionManager(ConnectionID)
        /// Over a connected TCP socket (not owned): the queue pair was brought up by hand with
        /// the numbers exchanged over it; the socket's end is the connection's end.
        case socket(Int32)
    }

    let id: Connection.ID
    /// How the connection is carried; an rdma_cm connection's id changes when it resumes.
    var endpoint: Endpoint
    var status = Status.unassociated
    /// An association (``Association``) is under way: a second one is refused.
    var associating = false
    var queuePair: QueuePair? {
        didSet {
            borrowedQueuePair = queuePair.map(Borrowed.init)
            queuePairNumber = queuePair?.number ?? 0
        }
    }
    /// The number of ``queuePair``: a completion that names another queue pair is a late one
    /// of a queue pair the connection replaced (``Resumption``), and is not the connection's.
    private(set) var queuePairNumber: UInt32 = 0
    /// The send queue's depth, and what a replacement queue pair is made with.
    var sendDepth = 0
    var queuePairCapabilities = QueuePairCapabilities()
    var area: DMAArea? {
        didSet { borrowedArea = area.map(Borrowed.init) }
    }
    /// `queuePair` and `area` for the data path, which runs with the channel's lock held: no
    /// reference counting per message. Owned by the two above.
    private(set) var borrowedQueuePair: Borrowed<QueuePair>?
    private(set) var borrowedArea: Borrowed<DMAArea>?
    /// The shared pool the connection receives through, if any (then `slotOffsets` are the
    /// pool's and its slots go back to the pool).
    var pool: SharedReceivePool?
    var poolSlotsClaimed = 0
    /// Completion-queue entries claimed from the event channel.
    var capacityTaken = 0
    /// Offsets of the receive slots in the area: the granted data slots, then room for the
    /// peer's credit updates.
    var slotOffsets: [Int] = []
    /// The area blocks the slots lie in (none for a pool's slots).
    var slotBlocks: [Int] = []
    var slotSize = 0
    /// The credits the peer may use: this side's grant, or fewer when the peer takes fewer
    /// (each side takes at most as many as it grants itself: ``WireProtocol``).
    var creditsGranted = 0
    /// Credits the peer holds: ``creditsGranted``, less its data messages received, plus the
    /// credits handed back to it. A data message that arrives when it holds none breaks the
    /// protocol (it would take a slot another message was promised): the connection ends.
    var peerCredits = 0
    var peerSlotSize = 0
    /// Data messages posted since the association (wrapping): the number of the next one. A
    /// resumed connection replays from the peer's count of messages received (``Resumption``).
    var messagesSent = 0
    /// Which slots the program holds (handed out, not yet released), by slot number: a queue
    /// pair that replaces a failed one gets every other free slot posted.
    var slotHeld: [Bool] = []
    /// The resume under way while ``status`` is ``Status/interrupted``.
    var resumption: Resumption?
    /// What a socket connection's queue pair was brought up with, to bring up another.
    var socketLink: SocketLink?
    /// An rdma_cm connection's resume: the token that names it at the server, and the port of
    /// the server's resume listener (0: the connection does not resume). The client resumes by
    /// connecting there; the server waits for it.
    var resumeToken: UInt64 = 0
    var resumePort: UInt16 = 0
    var resumesActively = false
    /// A server connection's local address, whose resume listener it uses.
    var resumeHost: String?
    /// The rdma_cm ids a resume replaced, kept until the connection goes (one per resume).
    var retiredIDs: [ConnectionID] = []
    /// How long an interrupted connection may take to resume before it is given up.
    var resumeDeadline = PeerTimeout.resumeDeadline
    /// Data messages this side may still send before the peer hands credits back.
    var credits = 0
    /// The most credits this side holds at once: the peer's grant as this side took it.
    /// Credits handed back beyond it were never spent: the peer broke the protocol.
    var creditLimit = 0
    /// Slots released and re-posted since the last message; handed back on the next one.
    var creditsToReturn: UInt32 = 0
    /// Released slots gathered for one `ibv_post_recv`; their credits are owed once posted.
    /// Sized at association (``repostBatchSize(granting:)``).
    var releasedSlots = ReceiveBatch(capacity: 1)
    var sendQueueFree = 0
    /// Completions seen for the connection (wrapping), and the count at the last keepalive
    /// sweep: unchanged means the connection was quiet for a whole interval.
    var activity: UInt32 = 0
    var activitySeen: UInt32 = 0
    /// A keepalive probe is posted and not completed.
    var probeOutstanding = false
    var pending = RingBuffer<PendingSend>()
    var inFlight = RingBuffer<PendingSend>()
    /// Received data messages not yet handed out.
    var arrivals = RingBuffer<Arrival>()
    var arrived = 0
    var announced = 0
    var handedOut = 0
    var inAnnouncementQueue = false
    /// The connection ended while messages were not announced yet: `.disconnected` follows
    /// their announcements.
    var disconnectUnreported = false
    /// Slots handed out and not yet released.
    var held = 0
    /// Whether the channel watches the TCP socket (socket connections, while connected).
    var socketWatched = false
    /// Why the connection ended, when it did not end by the peer's close: this side's device
    /// refused work, or a request failed (the peer stopped answering); nil otherwise.
    var failure: RDMAError?
    /// Tasks waiting for a message (``Connection/nextMessage()``) and for a credit
    /// (``Connection/send(_:)``).
    var messageWaiters = WaiterList()
    var creditWaiters = WaiterList()
    /// Where the last data send was posted from (for tests of the zero-copy path).
    var lastPostedSendAddress: UnsafeRawPointer?

    // Rendezvous (docs/large-messages.md). Sender side:
    /// The largest message the peer accepts (its slot size when it takes no large ones).
    var peerLargestMessage = 0
    /// Windows lent to the peer, one per large send between its bind and its invalidation
    /// (made on first need, at most ``windowLimit``), and those free.
    var windows: [MemoryWindow] = []
    var freeWindows: [Int32] = []
    /// The most windows this connection makes: the peer's grant, at most
    /// ``maximumWindows``. A large send that finds none free waits in the queue (in order) for
    /// an invalidation to complete, so a connection makes a bounded number of windows, once,
    /// and none in its steady state.
    var windowLimit = 0
    /// More large sends in flight than this gain nothing (the receiver reads them one after
    /// another) and would cost the device a window each.
    static let maximumWindows = 16
    /// Large sends whose request completed, waiting for the peer's done (oldest first).
    var awaitingDone = RingBuffer<PendingSend>()
    /// Large sends in `inFlight` (their request not yet completed).
    var largeInFlight = 0
    /// Dones received and not yet acted on (an invalidation not yet posted).
    var donesReceived = 0
    /// Large sends whose window's invalidation is posted (oldest first).
    var invalidating = RingBuffer<PendingSend>()
    // Receiver side:
    /// The largest message this side accepts, and how much of the area its large messages
    /// may hold at once (read or handed out).
    var largestMessage = 0
    var largeBytesInUse = 0
    /// The most bytes one read carries (``readPieceLimit``, or the port's `max_msg_sz` if less).
    var readPiece = ConnectionCore.readPieceLimit
    /// A large message is read in pieces of at most 32 KiB, one after another. On soft-RoCE a
    /// read's response comes as one burst of packets, and bursts get lost: 1 MiB every time
    /// within one host (an ACK timeout, 268 ms, per MiB: 3 MB/s at 16 MiB), 128 KiB often
    /// between two hosts (hundreds of retransmissions a minute, and once a queue pair that
    /// stopped making progress); 32 KiB pieces lost nothing in either (docs/large-messages.md).
    static let readPieceLimit = 32 << 10
    /// Requests not yet revealed, in order: `largeReads` of them have all their reads posted
    /// (the next may have some), the first `largeCompleted` of those have completed;
    /// `piecesCompleted` reads of the first not completed have.
    var largeReceives = RingBuffer<LargeReceive>()
    var largeReads = 0
    var largeCompleted = 0
    var piecesCompleted = 0
    /// Arrivals at the tail of `arrivals` not counted in `arrived` yet: from the first large
    /// message whose read has not completed on, messages wait hidden, so that none is handed out
    /// before one sent ahead of it.
    var hiddenArrivals = 0
    /// Dones owed to the peer (each with at least one owed credit).
    var donesToReturn: UInt32 = 0
    /// Large messages handed out and not yet released: block offset → bytes.
    var largeHeld: [Int: Int] = [:]

    init(id: Connection.ID, endpoint: Endpoint) {
        self.id = id
        self.endpoint = endpoint
    }

    /// Destroys the queue pair, then gives the area its blocks back: the slots, and the buffers
    /// of sends that never completed. The ``ConnectionRegistry`` calls it for every core it lets
    /// go (it is the only owner of cores).
    consuming func tearDown() {
        // Windows go before the queue pair: one still bound holds it (rxe then takes 50 s to
        // destroy it). The queue pair goes next: it may still own posted receives.
        windows = []
        queuePair = nil
        if let area {
            for block in slotBlocks { area.free(block) }
            while let send = pending.popFirst() { area.free(send.offset) }
            while let send = inFlight.popFirst() {
                if send.offset >= 0 { area.free(send.offset) }
            }
            while let send = awaitingDone.popFirst() { area.free(send.offset) }
            while let send = invalidating.popFirst() { area.free(send.offset) }
            while let receive = largeReceives.popFirst() {
                if receive.block >= 0 { area.free(receive.block) }
                // The request's slot is still held: a pool's goes back to the pool.
                try? pool?.repost(slot: Int(receive.requestSlot))
            }
            while let arrival = arrivals.popFirst() {
                if let block = arrival.block { area.free(block) }
            }
        }
    }

    /// Whether `area` is the connection's area: an identity check that counts no references.
    @inline(__always)
    func isArea(_ area: Unmanaged<DMAArea>) -> Bool { borrowedArea?.refers(to: area) ?? false }

    /// The rdma_cm id, for a connection made through rdma_cm.
    var cmID: ConnectionID? {
        if case .connectionManager(let id) = endpoint { return id }
        return nil
    }

    /// The TCP socket, for a connection brought up over one.
    var socket: Int32? {
        if case .socket(let descriptor) = endpoint { return descriptor }
        return nil
    }

    /// Whether the connection can carry no more data: the peer went away, it broke, or it was
    /// closed.
    var hasEnded: Bool { status == .disconnected || status == .closed }

    /// Whether data flows or will again: connected, or interrupted and resuming.
    var isOpen: Bool { status == .connected || status == .interrupted }

    /// Whether the connection may be forgotten: closed, every buffer it handed out back, every
    /// posted send completed (so each has had its event).
    var isFinished: Bool { status == .closed && held == 0 && inFlight.isEmpty && invalidating.isEmpty }

    /// Ends the connection at the transport: rdma_cm's disconnect (which also flushes the queue
    /// pair), or for a socket connection, flushing the queue pair and shutting the socket's
    /// sending side so that the peer sees the end.
    func disconnectTransport() {
        switch endpoint {
        case .connectionManager(let id):
            try? id.disconnect()
        case .socket(let descriptor):
            try? queuePair?.moveToError()
            _ = shutdown(descriptor, Int32(SHUT_WR))
        }
    }

    // MARK: - Request identifiers

    enum RequestKind: UInt64 {
        case dataSend = 0, creditUpdate = 1, receive = 2, sharedReceive = 3
    }

    /// The slot number that marks a keepalive probe among `creditUpdate` requests.
    static let probeSlot = Int(UInt32.max)
    /// Slot numbers that mark a rendezvous's other work among `creditUpdate` requests: a
    /// window's bind (unsignalled: seen only when it fails), its invalidation, and a read.
    static let bindSlot = Int(UInt32.max - 1)
    static let invalidateSlot = Int(UInt32.max - 2)
    static let readSlot = Int(UInt32.max - 3)

    @inline(__always)
    func requestID(_ kind: RequestKind, slot: Int = 0) -> UInt64 {
        kind.rawValue << 62 | UInt64(id.rawValue) << 32 | UInt64(UInt32(truncatingIfNeeded: slot))
    }

    /// The kind of request a work request identifier names (its top two bits).
    @inline(__always)
    static func kind(of requestID: UInt64) -> RequestKind {
        switch requestID >> 62 {
        case 0: .dataSend
        case 1: .creditUpdate
        case 2: .receive
        default: .sharedReceive
        }
    }

    /// The connection a work request identifier names (bits 32 to 61).
    @inline(__always)
    static func connection(of requestID: UInt64) -> UInt32 {
        UInt32(truncatingIfNeeded: requestID >> 32) & 0x3FFF_FFFF
    }

    // MARK: - Receive slots

    /// Re-posts a receive slot (to the shared pool when the connection receives through one).
    /// Inlined: `sio_release` runs it for every message.
    @inline(__always)
    func postReceive(slot: Int) throws(RDMAError) {
        if let pool { return try pool.repost(slot: slot) }
        let segment = borrowedArea!.with { $0.segment(at: slotOffsets[slot], count: slotSize) }
        try borrowedQueuePair!.with { queuePair throws(RDMAError) in
            try queuePair.postReceive(segment, requestID: requestID(.receive, slot: slot))
        }
    }

    /// How many released slots are gathered before they are re-posted with one call: a quarter
    /// of the grant, at most 16, so that the peer keeps at least three quarters of its credits
    /// while they wait (one slot at a time for grants under 8).
    static func repostBatchSize(granting credits: Int) -> Int { max(1, min(16, credits / 4)) }

    /// A released slot of a connected connection: a pool's goes back to the pool at once; a
    /// private one is gathered with others and re-posted with them in one `ibv_post_recv` call,
    /// as `ibv_rc_pingpong` re-posts in bulk, once a batch is full — or at once when the peer
    /// may have run out of credits (every slot it may fill is taken, held, released or owed
    /// here), so that gathering never stalls a sender. The credit goes back to the peer once the
    /// slot is posted.
    @inline(__always)
    mutating func repostReleased(slot: Int) throws(RDMAError) {
        if let pool {
            try pool.repost(slot: slot)
            creditsToReturn += 1
            return
        }
        let segment = borrowedArea!.with { $0.segment(at: slotOffsets[slot], count: slotSize) }
        releasedSlots.append(segment, requestID: requestID(.receive, slot: slot))
        if releasedSlots.isFull || releasedSlots.count + Int(creditsToReturn) + held + arrivals.count >= creditsGranted {
            try postReleased()
        }
    }

    /// Re-posts the gathered slots with one call; their credits are owed to the peer from now.
    @inline(never)
    mutating func postReleased() throws(RDMAError) {
        let count = releasedSlots.count
        try borrowedQueuePair!.with { queuePair throws(RDMAError) in try queuePair.post(&releasedSlots) }
        creditsToReturn += UInt32(count)
    }

    // MARK: - Sending

    /// Posts queued sends while credits and send-queue room last, then hands back any credits
    /// still owed in a credit update.
    @inline(__always)
    mutating func pumpSends() throws(RDMAError) {
        // Most calls (one per completion, one per release) find nothing queued and no credit
        // update due: they end here, without a call.
        guard !pending.isEmpty || creditUpdateIsDue || rendezvousWorkIsDue else { return }
        try postQueuedSends()
    }

    /// Whether a large message's work waits: a window to invalidate (the peer's done came), or
    /// a read to start (room in the area may have come).
    @inline(__always)
    private var rendezvousWorkIsDue: Bool {
        donesReceived > 0 && !awaitingDone.isEmpty || largeReads < largeReceives.count
    }

    /// Whether credits owed to the peer call for a credit update of their own. An update costs
    /// a message: send one when half the grant is owed, or when the peer may have run out
    /// (everything it may send is held or owed here), never later; otherwise the credits ride
    /// on the next data message.
    @inline(__always)
    private var creditUpdateIsDue: Bool {
        let owed = Int(creditsToReturn)
        return owed > 0 && (owed >= max(1, creditsGranted &>> 1) || owed + held + arrivals.count >= creditsGranted || donesToReturn > 0)
    }

    /// The credits and dones the next message carries: every owed credit, and up to
    /// ``WireProtocol/maxDones`` dones — leaving one credit per done it cannot carry, so that the
    /// message that carries those still hands back a credit.
    @inline(__always)
    mutating func takeCreditsAndDones() -> (credits: UInt32, dones: UInt32) {
        let dones = min(donesToReturn, WireProtocol.maxDones)
        let left = donesToReturn - dones
        let credits = creditsToReturn - left
        creditsToReturn = left
        donesToReturn = left
        peerCredits &+= Int(credits)
        return (credits, dones)
    }

    private mutating func postQueuedSends() throws(RDMAError) {
        guard status == .connected, let borrowedQueuePair else { return }
        if donesReceived > 0 || largeReads < largeReceives.count { try postRendezvousWork(on: borrowedQueuePair) }
        // One send-queue entry stays free for a credit update.
        if credits > 0, sendQueueFree > 1, !pending.isEmpty, let borrowedArea {
            while credits > 0, sendQueueFree > 1, let send = pending.front {
                if send.count > peerSlotSize {
                    // A large message: a window's bind and the request take two entries.
                    guard sendQueueFree > 2, let window = try takeWindow() else { break }
                    try postRendezvous(send, window: window, on: borrowedQueuePair, from: borrowedArea)
                } else {
                    try post(send, on: borrowedQueuePair, from: borrowedArea)
                }
                _ = pending.popFirst()
            }
        }
        if sendQueueFree > 0, creditUpdateIsDue {
            let (credits, dones) = takeCreditsAndDones()
            let immediate = WireProtocol.immediate(returning: credits, dones: dones, creditUpdate: true)
            let request = requestID(.creditUpdate)
            try borrowedQueuePair.with { queuePair throws(RDMAError) in
                try queuePair.postSend(
                    ScatterGatherElement(address: 0, length: 0, localKey: 0), requestID: request,
                    operation: .sendWithImmediate(immediate))
            }
            sendQueueFree -= 1
        }
    }

    /// Whether a data message could be posted at once: a credit and send-queue room at hand,
    /// nothing queued ahead of it.
    @inline(__always)
    var canPostAtOnce: Bool { pending.isEmpty && credits > 0 && sendQueueFree > 1 && status == .connected }

    /// Posts a data message at once when nothing waits ahead of it and a credit and send-queue
    /// room are at hand — the common case, which then takes no trip through the queue; false
    /// when it must wait in the queue. On error nothing was posted: the block is the caller's.
    @inline(__always)
    mutating func postAtOnce(_ send: PendingSend) throws(RDMAError) -> Bool {
        guard canPostAtOnce, let borrowedQueuePair, let borrowedArea else { return false }
        try post(send, on: borrowedQueuePair, from: borrowedArea)
        return true
    }

    /// Posts one data message, spending a credit and a send-queue entry; the credits owed to
    /// the peer ride along.
    @inline(__always)
    private mutating func post(_ send: PendingSend, on queuePair: Borrowed<QueuePair>, from area: Borrowed<DMAArea>) throws(RDMAError) {
        let (returned, dones) = takeCreditsAndDones()
        let immediate = WireProtocol.immediate(returning: returned, dones: dones, creditUpdate: false)
        let segment = area.with { $0.segment(at: send.offset, count: send.count) }
        let request = requestID(.dataSend)
        // Small payloads go inline where the device allows: the bytes travel inside the work
        // request. The buffer is kept until the send completes all the same (a resume may
        // send it again).
        try queuePair.with { queuePair throws(RDMAError) in
            let inline = send.count <= queuePair.capabilities.maxInlineData
            try queuePair.postSend(segment, requestID: request, operation: .sendWithImmediate(immediate), inline: inline)
        }
        lastPostedSendAddress = UnsafeRawPointer(bitPattern: UInt(segment.address))
        inFlight.append(send)
        messagesSent &+= 1
        credits -= 1
        sendQueueFree -= 1
    }

    /// Fails every queued send (after a disconnect or a close): their buffers go back to the
    /// area, and each that reports on the channel gets its `.sendFailed`.
    mutating func failPendingSends(into events: inout RingBuffer<Event>) {
        while let send = pending.popFirst() {
            area?.free(send.offset)
            if send.reportsEvent { events.append(.sendFailed(connection: id, cookie: send.cookie, status: .flushed)) }
        }
        failAwaitingDone(into: &events)
    }
}
