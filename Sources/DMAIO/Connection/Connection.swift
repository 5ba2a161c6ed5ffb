import CRDMA
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

/// A reliable connection to one peer — the proposal's socket, after `dma_assoc` turned it into
/// a zero-copy RDMA endpoint.
///
/// A client makes one with ``connect(to:from:events:timeout:)`` (or, blocking,
/// ``init(to:from:events:timeout:)``), which resolves the address to a device and route; a
/// server takes one from ``Listener/accept()``; or an ordinary connected TCP socket is upgraded
/// with ``init(socket:events:gidIndex:)``. Either way, ``associate(_:receiveBytes:slotSize:timeout:)``
/// (`dma_assoc`) completes it: the queue pair is created on the area's protection domain,
/// receive slots are carved out of the area and posted, the peers exchange their credits, and
/// ``Event/connected(connection:)`` follows. Then ``send(_:cookie:)`` (`aio_send`) and
/// ``receive()`` (`aio_recv`) move data without copying it — or, in a task,
/// ``send(_:)`` and ``nextMessage()``, which wait without holding a thread.
///
/// A message up to the peer's receive slot (``peerSlotSize``) is sent at once (inline when
/// small); a larger one, up to ``peerLargestMessage``, is read by the peer straight from the
/// sender's buffer into a block of its own area (rendezvous, docs/large-messages.md): still no
/// copy, and delivered in order with the others. Larger still is refused with
/// ``RDMAError/Code/messageTooLarge``, never split.
///
/// The connection's state lives in its ``EventChannel``, behind the channel's lock: a
/// connection may be used from any thread or task.
public final class Connection: Sendable {
    /// A connection's identity in events.
    public struct ID: Hashable, Sendable, CustomStringConvertible {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public var description: String { "connection \(rawValue)" }
    }

    /// Payloads up to this many bytes are sent inline (copied into the work request by the
    /// provider) where the device grants it; the device may grant more.
    static let inlineLimit = 64

    /// The event channel this connection reports to.
    public let events: EventChannel
    /// The connection's identity in ``Event``s.
    public let id: ID
    let endpoint: ConnectionCore.Endpoint
    /// The hello the peer sent with its connection request (server side).
    let peerHello: WireProtocol.Hello?
    /// The GID index the caller chose for a socket connection (else the socket's address picks).
    let explicitGIDIndex: Int?

    /// Resolves `address` (`HOST:PORT`) to an RDMA device and route — the first half of a
    /// connect; ``associate(_:receiveBytes:slotSize:timeout:)`` finishes it. Blocks the calling
    /// thread while rdma_cm resolves; ``connect(to:from:events:timeout:)`` is the same without
    /// blocking.
    ///
    /// `source` (a local IP address, no port) picks the local interface, and so the device,
    /// the connection leaves from; by default the routing table picks it.
    ///
    /// - Throws: ``RDMAError/Code/addressNotAvailable`` when no RDMA device routes there,
    ///   ``RDMAError/Code/timedOut`` when resolution takes longer than `timeout`.
    ///
    /// The corresponding C functions are `rdma_resolve_addr` and `rdma_resolve_route`.
    public convenience init(to address: String, from source: String? = nil, events: EventChannel, timeout: Duration = .seconds(5)) throws(RDMAError) {
        var resolution = try Resolution(to: address, from: source, timeout: timeout)
        try resolution.runBlocking()
        try self.init(cmID: resolution.id, events: events)
    }

    /// Resolves `address` (`HOST:PORT`) to an RDMA device and route without holding a thread —
    /// the first half of a connect; ``associate(_:receiveBytes:slotSize:timeout:)`` finishes it.
    ///
    /// - Throws: as ``init(to:from:events:timeout:)``, and `CancellationError` when the task is
    ///   cancelled.
    ///
    /// The corresponding C functions are `rdma_resolve_addr` and `rdma_resolve_route`.
    public static func connect(to address: String, from source: String? = nil, events: EventChannel, timeout: Duration = .seconds(5)) async throws -> Connection {
        var resolution = try Resolution(to: address, from: source, timeout: timeout)
        try await resolution.run()
        return try Connection(cmID: resolution.id, events: events)
    }

    init(cmID: ConnectionID, events: EventChannel, peerHello: WireProtocol.Hello? = nil) throws(RDMAError) {
        guard let context = cmID.context else {
            throw RDMAError(.addressNotAvailable, operation: "rdma_resolve_addr", message: "the connection is bound to no RDMA device")
        }
        guard context.pointer == events.context.pointer else {
            throw RDMAError(.wrongArea, operation: "dma_assoc",
                            message: "the connection runs over \(context.deviceName) but the event channel is on \(events.deviceName): create the EventChannel with device: \"\(context.deviceName)\"")
        }
        self.events = events
        endpoint = .connectionManager(cmID)
        self.peerHello = peerHello
        explicitGIDIndex = nil
        id = events.register(endpoint)
    }

    /// Upgrades a connected TCP socket: ``associate(_:receiveBytes:slotSize:timeout:)`` then
    /// runs a handshake over it with the peer (which does the same on its end) and brings a
    /// reliable-connected queue pair up by hand, the way `ibv_rc_pingpong` does. The socket's
    /// local address picks the RoCE GID; it must belong to the event channel's device.
    ///
    /// The socket stays the caller's: it must stay open while the connection lives (its end —
    /// the peer closing it or dying — is the connection's end), and ``close()`` shuts its sending
    /// side but does not close it.
    ///
    /// `gidIndex` overrides the GID (as `ibv_rc_pingpong -g` does); by default it is the RoCE v2
    /// GID of the socket's local address.
    ///
    /// - Throws: ``RDMAError/Code/invalidArgument`` (`EBADF`, `ENOTSOCK`, `ENOTCONN`) for a
    ///   descriptor that is not a connected stream socket.
    ///
    /// The corresponding C functions are `getsockopt` and `getpeername`.
    public init(socket: Int32, events: EventChannel, gidIndex: Int? = nil) throws(RDMAError) {
        try Self.checkConnectedStreamSocket(socket)
        self.events = events
        endpoint = .socket(socket)
        peerHello = nil
        explicitGIDIndex = gidIndex
        id = events.register(endpoint)
    }

    deinit {
        close()
    }

    /// The rdma_cm id, for a connection made through rdma_cm.
    var cmID: ConnectionID? {
        if case .connectionManager(let id) = endpoint { return id }
        return nil
    }

    // MARK: - Sockets

    /// Checks that `socket` is an open socket (`EBADF`, `ENOTSOCK` otherwise); returns its type.
    ///
    /// The corresponding C functions are `fcntl` and `getsockopt`.
    @discardableResult
    package static func checkSocket(_ socket: Int32, for operation: String) throws(RDMAError) -> Int32 {
        guard socket >= 0, fcntl(socket, F_GETFD) >= 0 else {
            throw RDMAError(.invalidArgument, operation: operation, errno: .badFileDescriptor,
                            message: "descriptor \(socket) is not open")
        }
        var type: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(socket, SOL_SOCKET, SO_TYPE, &type, &length) == 0 else {
            throw RDMAError(.invalidArgument, operation: operation, errno: .notSocket,
                            message: "descriptor \(socket) is not a socket: pass a connected TCP socket")
        }
        return type
    }

    private static func checkConnectedStreamSocket(_ socket: Int32) throws(RDMAError) {
        let type = try checkSocket(socket, for: "dma_assoc")
        guard type == Int32(SOCK_STREAM.rawValue) else {
            throw RDMAError(.invalidArgument, operation: "dma_assoc", errno: .invalidArgument,
                            message: "descriptor \(socket) is not a stream socket: pass a connected TCP socket")
        }
        var peer = sockaddr_storage()
        var peerLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let named = withUnsafeMutablePointer(to: &peer) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(socket, $0, &peerLength) }
        }
        guard named == 0 else {
            throw RDMAError(.notConnected, operation: "dma_assoc", errno: .socketNotConnected,
                            message: "the TCP socket \(socket) is not connected: connect (or accept) it first")
        }
    }

    /// The index of the RoCE GID that carries the socket's local IP address on `context`: the
    /// address the peer reaches this side at.
    static func gidIndex(of socket: Int32, on context: Context) throws(RDMAError) -> Int {
        let address = try localAddress(ofSocket: socket)
        let wanted: GID
        if let ipv4 = address.ipv4 {
            wanted = GID(ipv4MappedFrom: ipv4)
        } else if let raw = address.ipv6Bytes, let gid = GID(bytes: raw) {
            wanted = gid
        } else {
            throw RDMAError(.addressNotAvailable, operation: "dma_assoc", errno: .addressFamilyNotSupported,
                            message: "the socket's local address \(address) is neither IPv4 nor IPv6")
        }
        guard let index = try context.gidIndex(of: wanted) else {
            throw RDMAError(.wrongArea, operation: "dma_assoc", errno: .improperLink,
                            message: "the socket's local address \(address.host) has no RoCE GID on \(context.deviceName): connect the socket over "
                                + "that device's interface, or create the area and event channel on the device that owns \(address.host) (DMAIO_DEVICE)")
        }
        return index
    }

    // MARK: - State

    /// The peer's receive slot size: messages up to it go eagerly, larger ones by rendezvous;
    /// 0 before association.
    public var peerSlotSize: Int { events.state.withLock { $0.connections.core(id.rawValue)?.pointee.peerSlotSize ?? 0 } }

    /// The largest message the peer accepts (half its area by default); 0 before
    /// association.
    public var peerLargestMessage: Int { events.state.withLock { $0.connections.core(id.rawValue)?.pointee.peerLargestMessage ?? 0 } }

    /// Whether the connection is associated and established.
    public var isConnected: Bool { events.state.withLock { $0.connections.core(id.rawValue)?.pointee.status == .connected } }

    /// How long the connection may stay interrupted before it is given up: when its queue pair
    /// fails — the peer stopped answering for about two seconds, or the link went down — it
    /// resumes on a new one (``Event/interrupted(connection:)``, then
    /// ``Event/resumed(connection:)``) and loses nothing; a peer that is not back within this
    /// time is reported gone (``Event/disconnected(connection:)``, and later calls say why).
    /// 30 seconds by default; may be set at any time, and counts from the interruption.
    ///
    /// Over rdma_cm the client reconnects to the server's event channel; over an upgraded TCP
    /// socket the peers talk over the socket (docs/resume.md). A peer whose program closed the
    /// connection or died is never waited for: its kernel says so (a disconnect, the socket's
    /// end), and that ends the connection at once. A connection with a message larger than a
    /// slot between its request and its read does not resume, for now: it ends at the failure.
    public var resumeDeadline: Duration {
        get { events.state.withLock { $0.connections.core(id.rawValue)?.pointee.resumeDeadline ?? PeerTimeout.resumeDeadline } }
        set { events.state.withLock { $0.connections.core(id.rawValue)?.pointee.resumeDeadline = newValue } }
    }

    /// The send side's bookkeeping, for diagnostics: credits held, messages waiting for a
    /// credit, and messages posted to the queue pair and not yet completed.
    package var sendCounters: (credits: Int, waiting: Int, posted: Int) {
        events.state.withLock { state in
            guard let core = state.connections.core(id.rawValue) else { return (0, 0, 0) }
            return (core.pointee.credits, core.pointee.pending.count, core.pointee.inFlight.count)
        }
    }

    /// The rendezvous state, for failure reports of tests.
    package var rendezvousCounters: String {
        events.state.withLock { state in
            guard let core = state.connections.core(id.rawValue) else { return "no connection" }
            return "send queue free \(core.pointee.sendQueueFree), large in flight \(core.pointee.largeInFlight), awaiting done \(core.pointee.awaitingDone.count), "
                + "dones received \(core.pointee.donesReceived), invalidating \(core.pointee.invalidating.count), windows \(core.pointee.windows.count)/\(core.pointee.windowLimit), "
                + "large receives \(core.pointee.largeReceives.count) (reads posted \(core.pointee.largeReads), completed \(core.pointee.largeCompleted), pieces \(core.pointee.piecesCompleted)), "
                + "arrivals \(core.pointee.arrivals.count) (hidden \(core.pointee.hiddenArrivals)), owed credits \(core.pointee.creditsToReturn), owed dones \(core.pointee.donesToReturn), held \(core.pointee.held)"
        }
    }

    /// The connection's queue pair; for tests that break it on purpose.
    var queuePair: QueuePair? { events.state.withLock { $0.connections.core(id.rawValue)?.pointee.queuePair } }

    /// Stops watching the connection's TCP socket, so that the peer's resume goes unseen; for
    /// tests of a peer that never answers.
    func stopWatchingSocketForTesting() {
        events.state.withLock { state in
            guard let core = state.connections.core(id.rawValue) else { return }
            state.stopWatchingSocket(core)
        }
    }

    /// Where the last data send was posted from; for tests of the zero-copy path.
    var lastPostedSendAddress: UnsafeRawPointer? {
        events.state.withLock { $0.connections.core(id.rawValue)?.pointee.lastPostedSendAddress }
    }

    /// The queue pair's attributes as the device reports them — what a remote peer may do (remote
    /// write alone, for the zero-length keepalive writes: no memory region allows any remote
    /// access), the ACK timeout and retry count; nil before association and after ``close()``.
    ///
    /// The corresponding C function is `ibv_query_qp`.
    public func queuePairAttributes() throws(RDMAError) -> QueuePairAttributes? {
        let queuePair = events.state.withLock { state -> QueuePair? in
            guard let core = state.connections.core(id.rawValue), core.pointee.status != .closed else { return nil }
            return core.pointee.queuePair
        }
        return try queuePair?.attributes()
    }

    // MARK: - Association

    /// Associates the connection with `area` — the proposal's `dma_assoc` — and completes the
    /// connection. Blocks the calling thread until the peer answered (at most `timeout`);
    /// ``associate(_:receiveBytes:slotSize:timeout:)-async`` is the same without blocking.
    ///
    /// Messages larger than a slot are read by this side into blocks of `area`
    /// (docs/large-messages.md): `largeMessageBytes` bounds how much of the area they may hold at
    /// once (read, or handed out and not yet released) and so the largest one the peer may send;
    /// nil means half the area (the largest block its allocator can give beside the slots), 0
    /// none (the peer's larger messages are refused at the peer with `messageTooLarge`).
    ///
    /// `receiveBytes` of the area become `receiveBytes / slotSize` receive slots of `slotSize`
    /// bytes, posted as receive work requests; each is a credit granted to the peer (a server
    /// grants at most as many as the client has slots). Slots of the same size are added to
    /// absorb the peer's credit updates, one per credit of the peer's grant this side takes, so
    /// an association takes up to twice `receiveBytes` of the area (in one contiguous block,
    /// rounded up to a power of two by the area's allocator) whatever the peer announces. A peer
    /// that then breaks the credit protocol ends its connection (`disconnected`, a protocol
    /// error).
    ///
    /// `sendCredits` is the most of the peer's credits this side takes — how many messages it may
    /// have in flight to the peer, and so how many slots it sets aside for the peer's credit
    /// updates. Nil: as many as it grants (`receiveBytes / slotSize`), so by default both
    /// directions use the smaller of the two grants. Give more for a side that mostly sends to a
    /// peer that grants more (a server streaming to clients with large receive windows); the
    /// peer's grant bounds it in any case (see ``WireProtocol``).
    ///
    /// - Throws: ``RDMAError/Code/alreadyAssociated`` the second time;
    ///   ``RDMAError/Code/invalidArgument`` for a slot size that is not a power of two from 64 B
    ///   to 1 GiB, fewer receive bytes than one slot, or `sendCredits` below 1 or above 2^24 - 1;
    ///   ``RDMAError/Code/wrongArea`` when the area is on another device;
    ///   ``RDMAError/Code/areaExhausted`` when the area cannot hold the slots;
    ///   connection errors from rdma_cm (refused, unreachable, timed out). A failed association
    ///   closes the connection.
    ///
    /// The corresponding C functions are `rdma_create_qp`, `ibv_post_recv` and `rdma_connect`
    /// or `rdma_accept`.
    public func associate(_ area: DMAArea, receiveBytes: Int, slotSize: Int = 64 << 10, largeMessageBytes: Int? = nil,
                          sendCredits: Int? = nil, timeout: Duration = .seconds(10)) throws(RDMAError) {
        var association = try association(area, receiveBytes: receiveBytes, slotSize: slotSize, largeMessageBytes: largeMessageBytes,
                                          sendCredits: sendCredits, timeout: timeout)
        do { try association.runBlocking() } catch {
            association.abandon(after: error)
            throw error
        }
    }

    /// Associates the connection with `area` — `dma_assoc` — without holding a thread: the task
    /// is suspended while the peer answers. As the blocking
    /// ``associate(_:receiveBytes:slotSize:timeout:)``, and throws `CancellationError` when the
    /// task is cancelled (the connection is then closed).
    public func associate(_ area: DMAArea, receiveBytes: Int, slotSize: Int = 64 << 10, largeMessageBytes: Int? = nil,
                          sendCredits: Int? = nil, timeout: Duration = .seconds(10)) async throws {
        var association = try association(area, receiveBytes: receiveBytes, slotSize: slotSize, largeMessageBytes: largeMessageBytes,
                                          sendCredits: sendCredits, timeout: timeout)
        do { try await association.run() } catch {
            association.abandon(after: error)
            throw error
        }
    }

    /// Associates the connection with a pool of receive slots that several connections share
    /// through one shared receive queue — `dma_assoc` where one area serves many connections.
    ///
    /// The connection grants its peer `credits` (a server at most the client's room) and claims
    /// that many slots of the pool, plus room for the peer's credit updates: one per credit of
    /// the peer's it takes, at most `sendCredits` (nil: `credits`), whatever the peer announces;
    /// the association
    /// fails with ``RDMAError/Code/areaExhausted`` when the pool has not that many unclaimed.
    /// Slots a connection's messages occupy return to the pool when released, also after the
    /// connection closed.
    ///
    /// The corresponding C functions are `rdma_create_qp` (with the pool's `ibv_srq`) and
    /// `rdma_connect` or `rdma_accept`.
    public func associate(_ pool: SharedReceivePool, credits: Int, largeMessageBytes: Int? = nil, sendCredits: Int? = nil,
                          timeout: Duration = .seconds(10)) throws(RDMAError) {
        var association = try association(pool, credits: credits, largeMessageBytes: largeMessageBytes, sendCredits: sendCredits, timeout: timeout)
        do { try association.runBlocking() } catch {
            association.abandon(after: error)
            throw error
        }
    }

    /// Associates the connection with a shared pool without holding a thread; as the blocking
    /// ``associate(_:credits:timeout:)``, and throws `CancellationError` when the task is
    /// cancelled.
    public func associate(_ pool: SharedReceivePool, credits: Int, largeMessageBytes: Int? = nil, sendCredits: Int? = nil,
                          timeout: Duration = .seconds(10)) async throws {
        var association = try association(pool, credits: credits, largeMessageBytes: largeMessageBytes, sendCredits: sendCredits, timeout: timeout)
        do { try await association.run() } catch {
            association.abandon(after: error)
            throw error
        }
    }

    private func association(_ area: DMAArea, receiveBytes: Int, slotSize: Int, largeMessageBytes: Int?, sendCredits: Int?,
                             timeout: Duration) throws(RDMAError) -> Association {
        try Self.checkLargeMessageBytes(largeMessageBytes)
        try Self.checkSendCredits(sendCredits)
        try SharedReceivePool.checkSlotSize(slotSize)
        let dataSlots = receiveBytes / slotSize
        guard dataSlots >= 1, dataSlots <= Int(WireProtocol.creditMask) else {
            throw RDMAError(.invalidArgument, operation: "dma_assoc", errno: .invalidArgument,
                            message: "\(receiveBytes) receive bytes make \(dataSlots) slots of \(slotSize) bytes; at least one is needed")
        }
        try checkAssociable(area)
        return Association(self, area: area, slotSize: slotSize, credits: dataSlots, sendCredits: sendCredits, pool: nil,
                           largeMessageBytes: largeMessageBytes, timeout: timeout)
    }

    private func association(_ pool: SharedReceivePool, credits: Int, largeMessageBytes: Int?, sendCredits: Int?,
                             timeout: Duration) throws(RDMAError) -> Association {
        try Self.checkLargeMessageBytes(largeMessageBytes)
        try Self.checkSendCredits(sendCredits)
        guard credits >= 1, credits <= Int(WireProtocol.creditMask) else {
            throw RDMAError(.invalidArgument, operation: "dma_assoc", errno: .invalidArgument,
                            message: "a connection needs at least 1 credit, not \(credits)")
        }
        try checkAssociable(pool.area)
        return Association(self, area: pool.area, slotSize: pool.slotSize, credits: credits, sendCredits: sendCredits, pool: pool,
                           largeMessageBytes: largeMessageBytes, timeout: timeout)
    }

    private static func checkSendCredits(_ credits: Int?) throws(RDMAError) {
        guard let credits, credits < 1 || credits > Int(WireProtocol.creditMask) else { return }
        throw RDMAError(.invalidArgument, operation: "dma_assoc", errno: .invalidArgument,
                        message: "sendCredits \(credits): give how many of the peer's credits this side may use, 1 to \(WireProtocol.creditMask), or nil for as many as it grants")
    }

    private static func checkLargeMessageBytes(_ bytes: Int?) throws(RDMAError) {
        guard let bytes, bytes < 0 else { return }
        throw RDMAError(.invalidArgument, operation: "dma_assoc", errno: .invalidArgument,
                        message: "largeMessageBytes \(bytes): give how many bytes of the area large messages may hold (0: none), or nil for half the area")
    }

    /// The connection may be associated once, with an area on its device; from here on it is
    /// being associated.
    private func checkAssociable(_ area: DMAArea) throws(RDMAError) {
        guard area.context.pointer == events.context.pointer else {
            throw RDMAError(.wrongArea, operation: "dma_assoc", errno: .improperLink,
                            message: "the area is registered on \(area.deviceName) but the connection runs over \(events.deviceName)")
        }
        let status = events.state.withLock { state -> ConnectionCore.Status? in
            guard let core = state.connections.core(id.rawValue) else { return nil }
            guard core.pointee.status == .unassociated, !core.pointee.associating else { return .connected }
            core.pointee.associating = true
            return .unassociated
        }
        guard status == .unassociated else {
            let open = status == .connected
            throw RDMAError(.alreadyAssociated, operation: "dma_assoc", errno: open ? .socketIsConnected : .alreadyInProcess,
                            message: open
                                ? "\(id) is already associated with an area: associate each connection once"
                                : "\(id) is closed or disconnected: open a new connection")
        }
    }

    // MARK: - Sending

    /// Starts sending `buffer` — the proposal's `aio_send`. Consumes the buffer: the device
    /// reads it where it is (no copy); it returns to the area when the send completes, announced
    /// by ``Event/sent(connection:cookie:)`` with `cookie`.
    ///
    /// When the peer has no free receive slot (no credit), the message waits in order and goes
    /// out as soon as the peer releases one: a slow receiver throttles the sender, never fails
    /// it. What may wait is bounded by the area: every waiting message holds its buffer.
    ///
    /// - Throws: ``RDMAError/Code/notConnected`` before association or after ``close()``;
    ///   ``RDMAError/Code/disconnected`` after the peer went away;
    ///   ``RDMAError/Code/wrongArea`` for a buffer of another area;
    ///   ``RDMAError/Code/messageTooLarge`` beyond ``peerLargestMessage``;
    ///   ``RDMAError/Code/systemCall`` when the device refuses the work request
    ///   (`ibv_post_send` failed). On error the message was not sent and its buffer goes back
    ///   to its area.
    ///
    /// The corresponding C function is `ibv_post_send` (`IBV_WR_SEND_WITH_IMM`, signalled).
    public func send(_ buffer: consuming SendBuffer, cookie: UInt64) throws(RDMAError) {
        let (areaReference, offset, count) = buffer.take()
        defer { areaReference.release() }
        let send = ConnectionCore.PendingSend(offset: offset, count: count, cookie: cookie, reportsEvent: true)
        let id = self.id
        do {
            try events.state.withLock { state throws(RDMAError) in try state.send(send, on: id, area: areaReference) }
        } catch {
            areaReference._withUnsafeGuaranteedRef { $0.free(offset) }
            throw error
        }
    }

    /// Sends `buffer` once the peer has room for it, suspending the task (not a thread) while
    /// it has none — `aio_send` for a task. Consumes the buffer; returns once the message is
    /// posted to the device.
    ///
    /// Its completion is not reported on the event channel: the buffer returns to the area when
    /// the device is done with it. Should the connection break afterwards, ``nextMessage()``
    /// and later sends say so. (``send(_:cookie:)`` reports each send's completion as an event.)
    ///
    /// - Throws: as ``send(_:cookie:)``; `CancellationError` when the task is cancelled while it
    ///   waits (the buffer then goes back to the area, unsent, and the connection stays usable).
    ///
    /// The corresponding C function is `ibv_post_send` (`IBV_WR_SEND_WITH_IMM`, signalled).
    public func send(_ buffer: consuming SendBuffer) async throws {
        let (areaReference, offset, count) = buffer.take()
        defer { areaReference.release() }
        let send = ConnectionCore.PendingSend(offset: offset, count: count, cookie: 0, reportsEvent: false)
        let id = self.id
        do {
            while true {
                try Task.checkCancellation()
                let posted = try events.state.withLock { state throws(RDMAError) -> Bool in
                    try state.sendIfCredited(send, on: id, area: areaReference)
                }
                if posted { return }
                try await events.suspend(until: .credit(id.rawValue))
            }
        } catch {
            areaReference._withUnsafeGuaranteedRef { $0.free(offset) }
            throw error
        }
    }

    // MARK: - Receiving

    /// The next received message, or nil when none has arrived — the proposal's `aio_recv`. The
    /// buffer is where the device wrote the data inside the area (no copy); give it back with
    /// ``ReceivedBuffer/release()``.
    ///
    /// - Throws: ``RDMAError/Code/disconnected`` once the peer is gone and every message that
    ///   arrived was handed out; ``RDMAError/Code/notConnected`` before association or after
    ///   ``close()``.
    ///
    /// The corresponding C function is `ibv_poll_cq`.
    public func receive() throws(RDMAError) -> ReceivedBuffer? {
        let id = self.id
        return try events.state.withLock { state throws(RDMAError) -> ReceivedBuffer? in
            guard let arrival = try state.receive(id) else { return nil }
            return buffer(for: arrival, in: &state)
        }
    }

    /// The next message, suspending the task (not a thread) until one arrives — `aio_recv` for
    /// a task, so that one task can serve each connection of a channel:
    ///
    /// ```swift
    /// while let request = try await connection.nextMessage() {
    ///     handle(request.bytes)
    ///     request.release()
    /// }
    /// ```
    ///
    /// (A `ReceivedBuffer` is non-copyable, which an `AsyncSequence`'s elements cannot be: so a
    /// loop over `nextMessage()` stands where a `for try await` would.)
    ///
    /// - Returns: nil once the peer closed the connection and every message it sent was handed
    ///   out.
    /// - Throws: ``RDMAError/Code/disconnected`` when the connection broke (the peer stopped
    ///   answering, or this side's device refused work) and every message was handed out;
    ///   ``RDMAError/Code/notConnected`` before association or after ``close()``;
    ///   `CancellationError` when the task is cancelled (the connection stays usable).
    ///
    /// The corresponding C function is `ibv_poll_cq`.
    public func nextMessage() async throws -> ReceivedBuffer? {
        let id = self.id
        while true {
            try Task.checkCancellation()
            let look = try events.state.withLock { state throws(RDMAError) -> ChannelState.MessageLook in try state.lookForMessage(id) }
            switch look {
            case .message(let arrival):
                return events.state.withLock { state in buffer(for: arrival, in: &state) }
            case .end:
                return nil
            case .nothing:
                try await events.suspend(until: .message(id.rawValue))
            }
        }
    }

    /// The buffer of a message just handed out.
    private func buffer(for arrival: ConnectionCore.Arrival, in state: inout ChannelState) -> ReceivedBuffer {
        let core = state.connections.core(id.rawValue)!
        let start = state.address(ofSlot: arrival.slot, in: core)
        return ReceivedBuffer(channel: events, connection: id.rawValue, slot: arrival.slot,
                              bytes: UnsafeRawBufferPointer(start: start, count: Int(arrival.length)))
    }

    /// The length of the message ``receive()`` would hand out next, or nil when none has
    /// arrived; for a caller that must refuse messages longer than its buffer before taking them.
    package func nextMessageLength() throws(RDMAError) -> Int? {
        let id = self.id
        return try events.state.withLock { state throws(RDMAError) -> Int? in try state.nextArrival(id).map { Int($0.length) } }
    }

    /// The next received message in the proposal's own form: a view of the bytes where the
    /// device wrote them, which stays valid until ``DMAArea/releaseOldest(bytes:)`` (the seed's
    /// `sio_release(handle, size)`) releases them, oldest first. Nil when none has arrived.
    ///
    /// Use either this and ``DMAArea/releaseOldest(bytes:)``, or ``receive()`` and
    /// ``ReceivedBuffer/release()``; the view must not be used after its bytes are released.
    ///
    /// - Throws: as ``receive()``.
    public func receiveRetained() throws(RDMAError) -> UnsafeRawBufferPointer? {
        guard let message = try receive() else { return nil }
        let bytes = message.unsafeBytes
        let detached = message.detach()
        let area = events.state.withLock { $0.connections.core(id.rawValue)?.pointee.area }
        area!.retained.withLock {
            $0.entries.append(.init(message: detached, channel: events))
            $0.totalBytes += bytes.count
        }
        return bytes
    }

    // MARK: - Closing

    /// Closes the connection: disconnects, fails unsent messages, ends the waits of its tasks,
    /// and returns its receive slots to the area once every received buffer is released.
    /// Idempotent. Its queue pair and rdma_cm id are destroyed once every buffer is back and
    /// every posted send completed.
    ///
    /// The corresponding C functions are `rdma_disconnect` and `rdma_destroy_qp`.
    public func close() {
        events.close(id)
    }

    /// The local address: the rdma_cm id's, or the TCP socket's for an upgraded socket.
    ///
    /// The corresponding C functions are `rdma_get_local_addr` and `getsockname`.
    public var localAddress: SocketAddress? {
        switch endpoint {
        case .connectionManager(let cmID):
            return cmID.localAddress
        case .socket(let socket):
            return try? Self.localAddress(ofSocket: socket)
        }
    }

    /// A TCP socket's local address.
    ///
    /// The corresponding C function is `getsockname`.
    static func localAddress(ofSocket socket: Int32) throws(RDMAError) -> SocketAddress {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let address = withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { address in
                getsockname(socket, address, &length) == 0 ? SocketAddress(address) : nil
            }
        }
        guard let address else {
            throw RDMAError(.systemCall, operation: "getsockname", errno: .init(rawValue: errno), message: "reading the TCP socket's local address")
        }
        return address
    }

    /// Whether sends posted on the connection have not completed yet (a closed connection's are
    /// flushed within moments): the C ABI's `sio_close` waits for their events.
    package var hasSendsInFlight: Bool {
        let raw = id.rawValue
        return events.state.withLock { state in
            guard let core = state.connections.core(raw) else { return false }
            return !core.pointee.inFlight.isEmpty || !core.pointee.invalidating.isEmpty
        }
    }
}
