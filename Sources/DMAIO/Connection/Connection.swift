import CRDMA
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

/// A reliable connection to one peer, over rdma_cm — the proposal's socket, after `dma_assoc`
/// turned it into a zero-copy RDMA endpoint.
///
/// A client makes one with ``init(to:events:timeout:)`` (which resolves the address to a
/// device and route); a server takes one from ``Listener/accept(timeout:)``. Either way,
/// ``associate(_:receiveBytes:slotSize:timeout:)`` (`dma_assoc`) completes it: the queue pair
/// is created on the area's protection domain, receive slots are carved out of the area and
/// posted, the peers exchange their credits, and ``Event/connected(connection:)`` follows.
/// Then ``send(_:cookie:)`` (`aio_send`) and ``receive()`` (`aio_recv`) move data without
/// copying it.
///
/// Messages are at most one receive slot of the peer (``peerSlotSize``); larger ones are
/// refused with ``RDMAError/Code/messageTooLarge``, never split.
public final class Connection: @unchecked Sendable {
    /// A connection's identity in events.
    public struct ID: Hashable, Sendable, CustomStringConvertible {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public var description: String { "connection \(rawValue)" }
    }

    /// Payloads up to this many bytes are sent inline (copied into the work request by the
    /// provider) where the device grants it; the device may grant more.
    static let inlineLimit = 64

    let state: ConnectionState
    /// The event channel this connection reports to.
    public let events: EventChannel
    /// The connection's identity in ``Event``s.
    public var id: ID { state.id }

    /// Resolves `address` (`HOST:PORT`) to an RDMA device and route — the first half of a
    /// connect; ``associate(_:receiveBytes:slotSize:timeout:)`` finishes it.
    ///
    /// `source` (a local IP address, no port) picks the local interface, and so the device,
    /// the connection leaves from; by default the routing table picks it.
    ///
    /// - Throws: ``RDMAError/Code/addressNotAvailable`` when no RDMA device routes there,
    ///   ``RDMAError/Code/timedOut`` when resolution takes longer than `timeout`.
    ///
    /// The corresponding C functions are `rdma_resolve_addr` and `rdma_resolve_route`.
    public convenience init(to address: String, from source: String? = nil, events: EventChannel, timeout: Duration = .seconds(5)) throws(RDMAError) {
        let destination = try SocketAddress(parsing: address)
        let origin = try source.map { host throws(RDMAError) in try SocketAddress(host: host, port: 0) }
        let id = try ConnectionID(channel: try ConnectionEventChannel())
        try id.resolve(to: destination, from: origin, timeout: timeout)
        try self.init(cmID: id, events: events)
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
        state = events.register(.connectionManager(cmID))
        state.peerHello = peerHello
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
        state = events.register(.socket(socket))
        state.explicitGIDIndex = gidIndex
    }

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

    deinit {
        close()
    }

    /// The largest message the peer accepts (its receive slot size); 0 before association.
    public var peerSlotSize: Int { events.lock.withLock { _ in state.peerSlotSize } }

    /// Whether the connection is associated and established.
    public var isConnected: Bool { events.lock.withLock { _ in state.status == .connected } }

    /// Associates the connection with `area` — the proposal's `dma_assoc` — and completes the
    /// connection.
    ///
    /// `receiveBytes` of the area become `receiveBytes / slotSize` receive slots of `slotSize`
    /// bytes, posted as receive work requests; each is a credit granted to the peer (a server
    /// grants at most as many as the client has slots). Slots of the same size are added to
    /// absorb the peer's credit updates, as many as credits the peer grants (see
    /// ``WireProtocol``), so an association takes up to twice `receiveBytes` of the area — in
    /// one contiguous block, rounded up to a power of two by the area's allocator.
    ///
    /// - Throws: ``RDMAError/Code/alreadyAssociated`` the second time;
    ///   ``RDMAError/Code/invalidArgument`` for a slot size that is not a power of two from 64 B
    ///   to 1 GiB, or fewer receive bytes than one slot;
    ///   ``RDMAError/Code/wrongArea`` when the area is on another device;
    ///   ``RDMAError/Code/areaExhausted`` when the area cannot hold the slots;
    ///   connection errors from rdma_cm (refused, unreachable, timed out).
    ///
    /// The corresponding C functions are `rdma_create_qp`, `ibv_post_recv` and `rdma_connect`
    /// or `rdma_accept`.
    public func associate(_ area: DMAArea, receiveBytes: Int, slotSize: Int = 64 << 10, timeout: Duration = .seconds(10)) throws(RDMAError) {
        try SharedReceivePool.checkSlotSize(slotSize)
        let dataSlots = receiveBytes / slotSize
        guard dataSlots >= 1, dataSlots <= Int(WireProtocol.creditMask) else {
            throw RDMAError(.invalidArgument, operation: "dma_assoc", errno: .invalidArgument,
                            message: "\(receiveBytes) receive bytes make \(dataSlots) slots of \(slotSize) bytes; at least one is needed")
        }
        try establish(area: area, slotSize: slotSize, credits: dataSlots, pool: nil, timeout: timeout)
    }

    /// Associates the connection with a pool of receive slots that several connections share
    /// through one shared receive queue — `dma_assoc` where one area serves many connections.
    ///
    /// The connection grants its peer `credits` (a server at most the client's room) and claims
    /// that many slots of the pool, plus room for the peer's credit updates; the association
    /// fails with ``RDMAError/Code/areaExhausted`` when the pool has not that many unclaimed.
    /// Slots a connection's messages occupy return to the pool when released, also after the
    /// connection closed.
    ///
    /// The corresponding C functions are `rdma_create_qp` (with the pool's `ibv_srq`) and
    /// `rdma_connect` or `rdma_accept`.
    public func associate(_ pool: SharedReceivePool, credits: Int, timeout: Duration = .seconds(10)) throws(RDMAError) {
        guard credits >= 1, credits <= Int(WireProtocol.creditMask) else {
            throw RDMAError(.invalidArgument, operation: "dma_assoc", errno: .invalidArgument,
                            message: "a connection needs at least 1 credit, not \(credits)")
        }
        try establish(area: pool.area, slotSize: pool.slotSize, credits: credits, pool: pool, timeout: timeout)
    }

    private func establish(area: DMAArea, slotSize: Int, credits: Int, pool: SharedReceivePool?, timeout: Duration) throws(RDMAError) {
        let status = events.lock.withLock { _ in state.status }
        guard status == .unassociated, state.queuePair == nil else {
            throw RDMAError(.alreadyAssociated, operation: "dma_assoc", errno: status == .unassociated || status == .connected ? .socketIsConnected : .alreadyInProcess,
                            message: status == .unassociated || status == .connected
                                ? "\(id) is already associated with an area: associate each connection once"
                                : "\(id) is closed or disconnected: open a new connection")
        }
        guard area.context.pointer == events.context.pointer else {
            throw RDMAError(.wrongArea, operation: "dma_assoc", errno: .improperLink,
                            message: "the area is registered on \(area.deviceName) but the connection runs over \(events.deviceName)")
        }
        // Slot blocks taken from the area, returned if the association fails.
        var blocks: [Int] = []
        do throws(RDMAError) {
            switch state.endpoint {
            case .connectionManager(let cmID):
                try establish(over: cmID, area: area, slotSize: slotSize, credits: credits, pool: pool, blocks: &blocks, timeout: timeout)
            case .socket(let socket):
                try establish(over: socket, area: area, slotSize: slotSize, credits: credits, pool: pool, blocks: &blocks, timeout: timeout)
            }
            try events.connected(state)
        } catch {
            for block in blocks { area.free(block) }
            close()
            throw error
        }
    }

    /// The rdma_cm way: the hello rides in the connect request's private data and its accept.
    private func establish(
        over cmID: ConnectionID, area: DMAArea, slotSize: Int, credits: Int, pool: SharedReceivePool?,
        blocks: inout [Int], timeout: Duration
    ) throws(RDMAError) {
        // A client grants all its credits and makes room for as many credit updates; a server
        // grants no more than the client's room, and makes room for the client's grant.
        let granted: Int, room: Int
        if let request = state.peerHello {
            granted = min(credits, Int(request.room))
            room = Int(request.credits)
        } else {
            granted = credits
            room = credits
        }
        let sendDepth = Self.sendDepth(granting: granted)
        try reserveCapacity(sendDepth + granted + room)
        let offsets = try claimSlots(granted + room, area: area, slotSize: slotSize, pool: pool, blocks: &blocks)
        let queuePair = try cmID.createQueuePair(
            protectionDomain: area.protectionDomain, sendQueue: events.completionQueue, receiveQueue: events.completionQueue,
            capabilities: Self.capabilities(sendDepth: sendDepth, receives: granted + room, pool: pool),
            sharedReceiveQueue: pool?.queue)
        try install(queuePair, area: area, slotSize: slotSize, granted: granted, slotOffsets: offsets, sendDepth: sendDepth, pool: pool, blocks: &blocks)
        let hello = WireProtocol.Hello(credits: UInt32(granted), room: UInt32(room), slotSize: UInt32(slotSize))
        let peer: WireProtocol.Hello
        // No RDMA reads or atomics are offered (the API only sends). The queue pair keeps remote
        // write for the zero-length keepalive writes (see PeerTimeout); no memory region allows
        // remote access, so no remote write can touch memory.
        let parameters = ConnectionParameters(
            privateData: hello.bytes, responderResources: 0, initiatorDepth: 0, retryCount: PeerTimeout.retryCount)
        try cmID.setAckTimeout(PeerTimeout.ackTimeout)
        if let request = state.peerHello {
            _ = try cmID.accept(parameters, timeout: timeout)
            peer = request
        } else {
            let established = try cmID.connect(parameters, timeout: timeout)
            peer = try WireProtocol.Hello(parsing: established.privateData)
            guard Int(peer.credits) <= room else {
                throw RDMAError(.connectionFailed, operation: "dma_assoc", errno: .protocolError,
                                message: "the peer granted \(peer.credits) credits, more than the \(room) this side can absorb: protocol error")
            }
        }
        try queuePair.setRemoteAccess(.keepAliveOnly)
        events.lock.withLock { _ in
            // Added: a message that arrived meanwhile may have handed credits back already.
            state.credits += Int(peer.credits)
            state.peerSlotSize = Int(peer.slotSize)
        }
    }

    /// The TCP socket way (see ``SocketHandshake``): the queue pair is created and moved through
    /// INIT, RTR and RTS here, with the peer's numbers read from the socket.
    private func establish(
        over socket: Int32, area: DMAArea, slotSize: Int, credits: Int, pool: SharedReceivePool?,
        blocks: inout [Int], timeout: Duration
    ) throws(RDMAError) {
        let context = events.context
        // What this side grants must fit in the area at all: refused before the peer is involved.
        guard credits * slotSize <= area.size else {
            throw RDMAError(.areaExhausted, operation: "dma_assoc", errno: .noBufferSpace,
                            message: "\(credits) receive slots of \(slotSize) bytes do not fit in an area of \(area.size) bytes: associate fewer receive bytes, or allocate a larger area")
        }
        let gidIndex: Int
        if let explicit = state.explicitGIDIndex { gidIndex = explicit } else { gidIndex = try Self.gidIndex(of: socket, on: context) }
        let port = try context.requireActivePort(1)
        let local = try context.gid(port: 1, index: gidIndex)
        let psn = UInt32.random(in: 0...0xFF_FFFF)
        let hello = SocketHandshake.Hello(
            mtu: UInt8(port.activeMTU.rawValue),
            endpoint: QueuePairEndpoint(queuePairNumber: 0, packetSequenceNumber: psn, gid: local.gid),
            credits: UInt32(credits), slotSize: UInt32(slotSize))
        try SocketHandshake.send(hello.bytes, over: socket, timeout: timeout)
        let peer = try SocketHandshake.Hello(parsing: try SocketHandshake.receive(SocketHandshake.helloSize, over: socket, timeout: timeout))
        // This side's grant, and room for the peer's credit updates: one slot per peer credit.
        let room = Int(peer.credits)
        let sendDepth = Self.sendDepth(granting: credits)
        try reserveCapacity(sendDepth + credits + room)
        let offsets = try claimSlots(credits + room, area: area, slotSize: slotSize, pool: pool, blocks: &blocks)
        let queuePair = try QueuePair(
            protectionDomain: area.protectionDomain, sendQueue: events.completionQueue, receiveQueue: events.completionQueue,
            capabilities: Self.capabilities(sendDepth: sendDepth, receives: credits + room, pool: pool),
            sharedReceiveQueue: pool?.queue)
        try queuePair.moveToInit(port: 1, access: .keepAliveOnly)
        try SocketHandshake.send(SocketHandshake.queuePairNumberBytes(queuePair.number), over: socket, timeout: timeout)
        let peerQueuePair = try SocketHandshake.queuePairNumber(parsing: try SocketHandshake.receive(4, over: socket, timeout: timeout))
        try install(queuePair, area: area, slotSize: slotSize, granted: credits, slotOffsets: offsets, sendDepth: sendDepth, pool: pool, blocks: &blocks)
        var remote = peer.endpoint
        remote.queuePairNumber = peerQueuePair
        try queuePair.moveToReadyToReceive(remote: remote, port: 1, gidIndex: gidIndex, mtu: ibv_mtu(rawValue: min(UInt32(hello.mtu), UInt32(peer.mtu))))
        try queuePair.moveToReadyToSend(packetSequenceNumber: psn, timeout: PeerTimeout.ackTimeout, retryCount: PeerTimeout.retryCount)
        // Both sides have posted their receives: data may flow once the peer says so.
        try SocketHandshake.send([SocketHandshake.readyByte], over: socket, timeout: timeout)
        let ready = try SocketHandshake.receive(1, over: socket, timeout: timeout)
        guard ready == [SocketHandshake.readyByte] else {
            throw RDMAError(.connectionFailed, operation: "dma_assoc", errno: .protocolError,
                            message: "the peer sent \(ready[0]) instead of the handshake's ready byte: is it a DMAIO peer?")
        }
        events.lock.withLock { _ in
            state.credits += room
            state.peerSlotSize = Int(peer.slotSize)
        }
    }

    /// Send-queue depth: data sends for every credit, credit updates, and spare.
    private static func sendDepth(granting credits: Int) -> Int { max(8, 2 * credits + 2) }

    private static func capabilities(sendDepth: Int, receives: Int, pool: SharedReceivePool?) -> QueuePairCapabilities {
        QueuePairCapabilities(maxSendRequests: sendDepth, maxReceiveRequests: pool == nil ? receives : 0, maxInlineData: inlineLimit)
    }

    private func reserveCapacity(_ entries: Int) throws(RDMAError) {
        try events.reserveCapacity(entries)
        events.lock.withLock { _ in state.capacityTaken = entries }
    }

    /// Takes `count` receive slots and returns their offsets: the pool's, or slots side by
    /// side in one block of the area (added to `blocks`), so that small slots do not each take
    /// a whole allocator block.
    private func claimSlots(_ count: Int, area: DMAArea, slotSize: Int, pool: SharedReceivePool?, blocks: inout [Int]) throws(RDMAError) -> [Int] {
        if let pool {
            try pool.claim(count)
            events.lock.withLock { _ in
                state.pool = pool
                state.poolSlotsClaimed = count
            }
            return pool.slotOffsets
        }
        let block = try area.allocate(count * slotSize, for: "dma_assoc")
        blocks.append(block)
        return (0..<count).map { block + $0 * slotSize }
    }

    /// Hands the queue pair and the slots to the state and posts the receives.
    private func install(
        _ queuePair: QueuePair, area: DMAArea, slotSize: Int, granted: Int, slotOffsets: [Int], sendDepth: Int,
        pool: SharedReceivePool?, blocks: inout [Int]
    ) throws(RDMAError) {
        let slots = slotOffsets.count
        try events.lock.withLock { _ throws(RDMAError) in
            state.area = area
            state.queuePair = queuePair
            state.keepForBuffers()
            state.slotOffsets = slotOffsets
            state.slotBlocks = blocks
            state.slotSize = slotSize
            state.creditsGranted = granted
            state.releasedSlots = ReceiveBatch(capacity: ConnectionState.repostBatchSize(granting: granted))
            state.sendQueueFree = sendDepth
            state.arrivals.reserveCapacity(slots)
            state.inFlight.reserveCapacity(sendDepth)
            state.pending.reserveCapacity(sendDepth)
            blocks = []  // the state owns them now
            if pool == nil {
                for slot in 0..<slots { try state.postReceive(slot: slot) }
            }
        }
        if let pool { events.attach(state, queuePairNumber: queuePair.number, pool: pool) }
    }

    /// The index of the RoCE GID that carries the socket's local IP address on `context`: the
    /// address the peer reaches this side at.
    private static func gidIndex(of socket: Int32, on context: Context) throws(RDMAError) -> Int {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let named = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(socket, $0, &length) }
        }
        guard named == 0, let address = SocketAddress(withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { $0 } }) else {
            throw RDMAError(.systemCall, operation: "getsockname", errno: .init(rawValue: errno), message: "reading the TCP socket's local address")
        }
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

    /// Starts sending `buffer` — the proposal's `aio_send`. Consumes the buffer: the device
    /// reads it where it is (no copy); it returns to the area when the send completes, announced
    /// by ``Event/sent(connection:cookie:)`` with `cookie`.
    ///
    /// When the peer has no free receive slot (no credit), the message waits in order and goes
    /// out as soon as the peer releases one: a slow receiver throttles the sender, never fails it.
    ///
    /// - Throws: ``RDMAError/Code/notConnected`` before association or after ``close()``;
    ///   ``RDMAError/Code/disconnected`` after the peer went away;
    ///   ``RDMAError/Code/wrongArea`` for a buffer of another area;
    ///   ``RDMAError/Code/messageTooLarge`` beyond ``peerSlotSize``;
    ///   ``RDMAError/Code/systemCall`` when the device refuses the work request
    ///   (`ibv_post_send` failed). On error the message was not sent and its buffer goes back
    ///   to its area.
    ///
    /// The corresponding C function is `ibv_post_send` (`IBV_WR_SEND_WITH_IMM`, signalled).
    public func send(_ buffer: consuming SendBuffer, cookie: UInt64 = 0) throws(RDMAError) {
        let (areaReference, offset, count) = buffer.take()
        defer { areaReference.release() }
        try events.lock.withLock { _ throws(RDMAError) in
            let send = ConnectionState.PendingSend(offset: offset, count: count, cookie: cookie)
            do throws(RDMAError) {
                // The common case, inline: a message of this connection's area that fits, with a
                // credit and send-queue room at hand and nothing queued ahead of it.
                if state.isArea(areaReference), count <= state.peerSlotSize, try state.postAtOnce(send) { return }
                try sendOtherwiseLocked(send, area: areaReference)
            } catch {
                areaReference._withUnsafeGuaranteedRef { $0.free(offset) }
                throw error
            }
        }
    }

    /// Every other case of ``send(_:cookie:)``, out of line: a connection that is not usable, a
    /// buffer of another area, a message too large, a sender out of credits (it pumps: credit
    /// updates may be waiting), a message that must wait in the queue. Throws (and the caller
    /// frees the buffer) only when the message was not taken.
    @inline(never)
    private func sendOtherwiseLocked(_ send: ConnectionState.PendingSend, area: Unmanaged<DMAArea>) throws(RDMAError) {
        if state.status != .connected { try checkUsableLocked(for: "aio_send") }
        guard state.isArea(area) else {
            throw RDMAError(.wrongArea, operation: "aio_send", errno: .invalidArgument,
                            message: "the buffer was reserved from another area than the one \(id) is associated with")
        }
        guard send.count <= state.peerSlotSize else {
            throw RDMAError(.messageTooLarge, operation: "aio_send", errno: .messageTooLong,
                            message: "a message of \(send.count) bytes exceeds the peer's receive slots of \(state.peerSlotSize) bytes: "
                                + "send smaller messages, or have the peer associate with a larger slotSize")
        }
        // Out of credits: credit updates may be waiting in the completion queue (a poll of
        // user-mapped memory, no system call), so a sender that only sends still moves.
        if state.credits == 0 {
            try events.pumpLocked()
            if state.status != .connected { try checkUsableLocked(for: "aio_send") }
        }
        if try state.postAtOnce(send) { return }
        state.pending.append(send)
        // The message is queued now: if the device refuses the queue's sends, the connection
        // ends, and each queued message, this one included, is reported failed by its event.
        do throws(RDMAError) { try state.pumpSends() } catch { events.endLocked(state, after: error) }
    }

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
        try events.lock.withLock { _ throws(RDMAError) -> ReceivedBuffer? in
            var next = state.arrivals.popFirst()
            // After the peer left, too: what it sent before may still be in the queue.
            if next == nil, state.status == .connected || state.status == .disconnected {
                next = try events.pumpLocked(handingOutTo: state) ?? state.arrivals.popFirst()
            }
            guard let arrival = next else {
                if state.status != .connected { try checkUsableLocked(for: "aio_recv") }
                return nil
            }
            state.handedOut += 1
            state.held += 1
            let start = state.area!.address(state.slotOffsets[Int(arrival.slot)])
            return ReceivedBuffer(owner: state, slot: Int(arrival.slot),
                                  bytes: UnsafeRawBufferPointer(start: start, count: Int(arrival.length)))
        }
    }

    /// The length of the message ``receive()`` would hand out next, or nil when none has
    /// arrived; for a caller that must refuse messages longer than its buffer before taking them.
    package func nextMessageLength() throws(RDMAError) -> Int? {
        try events.lock.withLock { _ throws(RDMAError) -> Int? in
            try nextArrivalLocked().map { Int($0.length) }
        }
    }

    /// The message to hand out next, after taking what the device reported when none is
    /// waiting; nil when none has arrived. Throws once the connection is unusable and every
    /// message was handed out. Lock held.
    @inline(__always)
    private func nextArrivalLocked() throws(RDMAError) -> ConnectionState.Arrival? {
        if state.arrivals.isEmpty, state.status == .connected || state.status == .disconnected { try events.pumpLocked() }
        guard let front = state.arrivals.front else {
            if state.status != .connected { try checkUsableLocked(for: "aio_recv") }
            return nil
        }
        return front
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
        let bytes = message.bytes
        let (owner, slot) = message.disown()
        owner.area!.retained.withLock {
            $0.entries.append(.init(owner: owner, slot: slot, length: bytes.count))
            $0.totalBytes += bytes.count
        }
        return bytes
    }

    @inline(never)
    private func checkUsableLocked(for operation: String) throws(RDMAError) {
        switch state.status {
        case .connected: return
        case .unassociated:
            throw RDMAError(.notConnected, operation: operation, errno: .socketNotConnected,
                            message: "\(id) is not associated with an area yet: call associate (dma_assoc) first")
        case .disconnected:
            if let failure = state.failure {
                throw RDMAError(.disconnected, operation: operation, errno: .connectionReset,
                                message: "\(id) ended after the device refused work (\(failure.operation): \(failure.message)): open a new connection")
            }
            throw RDMAError(.disconnected, operation: operation, errno: .connectionReset,
                            message: "the peer of \(id) disconnected: open a new connection")
        case .closed:
            throw RDMAError(.notConnected, operation: operation, errno: .badFileDescriptor,
                            message: "\(id) was closed")
        }
    }

    /// The queue pair's attributes as the device reports them — what a remote peer may do (remote
    /// write alone, for the zero-length keepalive writes: no memory region allows any remote
    /// access), the ACK timeout and retry count; nil before association and after ``close()``.
    ///
    /// The corresponding C function is `ibv_query_qp`.
    public func queuePairAttributes() throws(RDMAError) -> QueuePairAttributes? {
        guard let queuePair = events.lock.withLock({ _ in state.status == .closed ? nil : state.queuePair }) else { return nil }
        return try queuePair.attributes()
    }

    /// The send side's bookkeeping, for diagnostics: credits held, messages waiting for a
    /// credit, and messages posted to the queue pair and not yet completed.
    package var sendCounters: (credits: Int, waiting: Int, posted: Int) {
        events.lock.withLock { _ in (state.credits, state.pending.count, state.inFlight.count) }
    }

    /// Closes the connection: disconnects, fails unsent messages, and returns its receive
    /// slots to the area once every received buffer is released. Idempotent. Its queue pair
    /// and rdma_cm id are destroyed when the last reference to the connection (and to its
    /// received buffers) goes away.
    ///
    /// The corresponding C functions are `rdma_disconnect` and `rdma_destroy_qp`.
    public func close() {
        let wasOpen = events.lock.withLock { _ -> Bool in
            guard state.status != .closed else { return false }
            let wasConnected = state.status == .connected
            state.status = .closed
            if wasConnected { state.disconnectTransport() }
            // Messages that arrived and were never handed out go back to a shared pool now.
            if let pool = state.pool {
                while let arrival = state.arrivals.popFirst() { try? pool.repost(slot: Int(arrival.slot)) }
            }
            // With no buffer out, the state goes with this connection (which holds it still).
            _ = state.endKeepingIfDone()
            return true
        }
        guard wasOpen else { return }
        events.unregister(state)
        events.returnCapacity(events.lock.withLock { _ in state.capacityTaken })
        if let pool = state.pool { pool.unclaim(state.poolSlotsClaimed) }
    }

    /// Where the last data send was posted from; for tests of the zero-copy path.
    var lastPostedSendAddress: UnsafeRawPointer? { events.lock.withLock { _ in state.lastPostedSendAddress } }
}
