import CRDMA
import RDMAVerbs
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// One association in progress — the proposal's `dma_assoc`: the queue pair is created on the
/// area's protection domain, receive slots are carved out of the area (or claimed from a shared
/// pool) and posted, the peers exchange their credits, and the connection is marked connected
/// (``Event/connected(connection:)``).
///
/// Over rdma_cm the hello rides in the connect request's private data and its accept
/// (``WireProtocol``); over a TCP socket the peers run ``SocketHandshake`` and bring the queue
/// pair up by hand. Either way as steps that never block (``Handshake``): ``Connection``'s
/// blocking and asynchronous `associate` drive the same steps.
///
/// A set-up that fails or is abandoned gives back what it took (``abandon(after:)``).
struct Association: Handshake, ~Copyable {
    let connection: Connection
    let area: DMAArea
    let slotSize: Int
    /// The credits this side offers (a server grants at most the client's room).
    let credits: Int
    /// The most of the peer's credits this side takes, and so the most slots it sets aside for
    /// the peer's credit updates: `sendCredits`, or as many as it grants.
    let creditsToTake: Int
    let pool: SharedReceivePool?
    /// How much of the area messages larger than a slot may hold at once (nil: half the area).
    let largeMessageBytes: Int?
    let deadline: ContinuousClock.Instant
    /// Slot blocks taken from the area and not yet handed to the connection.
    private var blocks: [Int] = []
    private var step = Step.start
    private var exchange = SocketExchange()

    private enum Step {
        case start
        /// rdma_cm: the connect request (or accept) is out; waiting for ESTABLISHED.
        case awaitingEstablished(QueuePair, granted: Int, room: Int)
        /// Socket: hellos are being exchanged.
        case exchangingHellos(SocketHandshake.Hello, gidIndex: Int)
        /// Socket: queue pair numbers are being exchanged.
        case exchangingQueuePairs(QueuePair, SocketHandshake.Hello, peer: SocketHandshake.Hello, gidIndex: Int, offsets: [Int], sendDepth: Int,
                                  room: Int, capabilities: QueuePairCapabilities)
        /// Socket: ready bytes are being exchanged.
        case exchangingReady(room: Int, grantUsed: Int, peerSlotSize: Int, peerLargestMessage: Int)
        case done
    }

    init(_ connection: Connection, area: DMAArea, slotSize: Int, credits: Int, sendCredits: Int?, pool: SharedReceivePool?,
         largeMessageBytes: Int?, timeout: Duration) {
        self.connection = connection
        self.area = area
        self.slotSize = slotSize
        self.credits = credits
        creditsToTake = sendCredits ?? credits
        self.pool = pool
        self.largeMessageBytes = largeMessageBytes
        deadline = .now + timeout
    }

    private var events: EventChannel { connection.events }
    private var id: Connection.ID { connection.id }

    func timedOut() -> RDMAError {
        switch connection.endpoint {
        case .connectionManager:
            RDMAError(.timedOut, operation: "rdma_get_cm_event", errno: .timedOut,
                      message: "no ESTABLISHED within the association's time limit while \(connection.peerHello == nil ? "connecting" : "accepting a connection"): is the peer up and reachable over RDMA?")
        case .socket:
            RDMAError(.timedOut, operation: "dma_assoc", errno: .timedOut,
                      message: "the peer did not complete the handshake within the association's time limit: does it call dma_assoc on its end of the socket?")
        }
    }

    /// Gives back what the set-up took and closes the connection: after a failure, a timeout or
    /// a cancellation.
    mutating func abandon(after error: any Error) {
        for block in blocks { area.free(block) }
        blocks = []
        // A server that has not answered the request yet says why it refuses it.
        if case .connectionManager(let cmID) = connection.endpoint, connection.peerHello != nil, cmID.isAwaitingAnswer,
           let failure = error as? RDMAError {
            let errno = failure.code == .areaExhausted ? ENOBUFS : failure.errno?.rawValue ?? EPROTO
            try? cmID.reject(privateData: WireProtocol.Refusal(errno: errno).bytes)
        }
        connection.close()
    }

    mutating func advance() throws(RDMAError) -> HandshakeProgress {
        switch connection.endpoint {
        case .connectionManager(let cmID): try advance(over: cmID)
        case .socket(let socket): try advance(over: socket)
        }
    }

    // MARK: - rdma_cm

    /// A client grants all its credits and makes room for as many credit updates as it takes
    /// credits (``creditsToTake``); a server grants no more than the client's room, and makes
    /// room for — takes — no more of the client's grant than its own ``creditsToTake``: what a
    /// client announces never decides how much of the server's area (or pool) it gets.
    private mutating func advance(over cmID: ConnectionID) throws(RDMAError) -> HandshakeProgress {
        switch step {
        case .start:
            let granted: Int, room: Int
            if let request = connection.peerHello {
                granted = min(credits, Int(request.room))
                room = min(Int(request.credits), creditsToTake)
            } else {
                granted = credits
                room = creditsToTake
            }
            let sendDepth = Self.sendDepth(granting: granted, taking: room)
            try events.reserveCapacity(sendDepth + granted + room, for: id)
            let offsets = try claimSlots(granted + room)
            let capabilities = Self.capabilities(sendDepth: sendDepth, receives: granted + room, pool: pool)
            let queuePair = try cmID.createQueuePair(
                protectionDomain: area.protectionDomain, sendQueue: events.completionQueue, receiveQueue: events.completionQueue,
                capabilities: capabilities, sharedReceiveQueue: pool?.queue)
            try install(queuePair, granted: granted, slotOffsets: offsets, sendDepth: sendDepth, capabilities: capabilities)
            var hello = WireProtocol.Hello(credits: UInt32(granted), room: UInt32(room), slotSize: UInt32(slotSize),
                                           largestMessage: UInt64(largestMessage))
            // A server names the connection for a resume, and says where to send it.
            if connection.peerHello != nil, let resume = events.prepareResume(id, localAddress: cmID.localAddress) {
                hello.resumeToken = resume.token
                hello.resumePort = resume.port
            }
            // One RDMA read each way (a large message's receiver reads it: docs/large-messages.md),
            // no atomics. The queue pair allows remote write for the zero-length keepalive writes
            // (see PeerTimeout) and remote read for windows the sender binds, one buffer at a
            // time; no memory region allows remote access itself.
            let parameters = ConnectionParameters(
                privateData: hello.bytes, responderResources: 1, initiatorDepth: 1, retryCount: PeerTimeout.retryCount)
            try cmID.setAckTimeout(PeerTimeout.ackTimeout)
            if connection.peerHello != nil {
                try cmID.startAccepting(parameters)
            } else {
                try cmID.startConnecting(parameters)
            }
            step = .awaitingEstablished(queuePair, granted: granted, room: room)
            return try advance(over: cmID)
        case .awaitingEstablished(let queuePair, let granted, let room):
            var progress = HandshakeProgress.done
            guard let event = try cmID.channel.nextEvent(orWait: &progress) else { return progress }
            if event.kind == .rejected, connection.peerHello == nil, let refusal = WireProtocol.Refusal(parsing: event.privateData) {
                let reason = Errno(rawValue: refusal.errno)
                throw RDMAError(.connectionFailed, operation: "rdma_connect", errno: .connectionRefused,
                                message: "the server refused the connection: its dma_assoc failed with \(reason) (errno \(refusal.errno))"
                                    + (reason == .noBufferSpace ? ": its area has no room for this connection's slots (fewer receive bytes on either side, or a larger area there)" : ""))
            }
            guard event.kind == .established else {
                throw RDMAError(connectionEvent: event, expected: .established,
                                while: connection.peerHello == nil ? "connecting to \(cmID.peerAddress.map(String.init(describing:)) ?? "the peer")" : "accepting a connection")
            }
            let peer: WireProtocol.Hello, taken: Int, grantUsed: Int
            if let request = connection.peerHello {
                peer = request
                (taken, grantUsed) = (room, granted)
            } else {
                peer = try WireProtocol.Hello(parsing: event.privateData)
                guard Int(peer.credits) <= room else {
                    throw RDMAError(.connectionFailed, operation: "dma_assoc", errno: .protocolError,
                                    message: "the peer granted \(peer.credits) credits, more than the \(room) this side can absorb: protocol error")
                }
                // The server takes as many of this side's credits as it made room for.
                (taken, grantUsed) = (Int(peer.credits), min(granted, Int(peer.room)))
                // Where this side resumes the connection, should its queue pair fail.
                if peer.resumeToken != 0, peer.resumePort != 0 {
                    let id = self.id
                    events.state.withLock { state in
                        guard let core = state.connections.core(id.rawValue) else { return }
                        core.pointee.resumeToken = peer.resumeToken
                        core.pointee.resumePort = peer.resumePort
                        core.pointee.resumesActively = true
                    }
                }
            }
            try queuePair.setRemoteAccess(.peerAccess)
            try finish(credits: taken, grantUsed: grantUsed, peerSlotSize: Int(peer.slotSize), peerLargestMessage: Int(peer.largestMessage))
            return .done
        case .done:
            return .done
        default:
            preconditionFailure("an rdma_cm association in a socket step")
        }
    }

    // MARK: - TCP socket

    /// The queue pair is created and moved through INIT, RTR and RTS here, with the peer's
    /// numbers read from the socket (see ``SocketHandshake``).
    private mutating func advance(over socket: Int32) throws(RDMAError) -> HandshakeProgress {
        let context = events.context
        switch step {
        case .start:
            // What this side grants must fit in the area at all: refused before the peer is
            // involved.
            guard credits * slotSize <= area.size else {
                throw RDMAError(.areaExhausted, operation: "dma_assoc", errno: .noBufferSpace,
                                message: "\(credits) receive slots of \(slotSize) bytes do not fit in an area of \(area.size) bytes: associate fewer receive bytes, or allocate a larger area")
            }
            let gidIndex: Int
            if let explicit = connection.explicitGIDIndex { gidIndex = explicit } else { gidIndex = try Connection.gidIndex(of: socket, on: context) }
            let port = try context.requireActivePort(1)
            let local = try context.gid(port: 1, index: gidIndex)
            let hello = SocketHandshake.Hello(
                mtu: UInt8(port.activeMTU.rawValue),
                endpoint: QueuePairEndpoint(queuePairNumber: 0, packetSequenceNumber: UInt32.random(in: 0...0xFF_FFFF), gid: local.gid),
                credits: UInt32(credits), slotSize: UInt32(slotSize), largestMessage: UInt64(largestMessage))
            exchange.start(sending: hello.bytes, receiving: SocketHandshake.helloSize)
            step = .exchangingHellos(hello, gidIndex: gidIndex)
            return try advance(over: socket)
        case .exchangingHellos(let hello, let gidIndex):
            if case let progress = try exchange.advance(on: socket), !progress.isDone { return progress }
            let peer = try SocketHandshake.Hello(parsing: exchange.incoming)
            // This side's grant, and room for the peer's credit updates: one slot per peer credit
            // it takes, at most ``creditsToTake``, so the peer's announcement never decides how
            // much of the area it gets. The peer says how many of this side's it takes next.
            let room = min(Int(peer.credits), creditsToTake)
            let sendDepth = Self.sendDepth(granting: credits, taking: room)
            try events.reserveCapacity(sendDepth + credits + room, for: id)
            let offsets = try claimSlots(credits + room)
            let capabilities = Self.capabilities(sendDepth: sendDepth, receives: credits + room, pool: pool)
            let queuePair = try QueuePair(
                protectionDomain: area.protectionDomain, sendQueue: events.completionQueue, receiveQueue: events.completionQueue,
                capabilities: capabilities, sharedReceiveQueue: pool?.queue)
            try queuePair.moveToInit(port: 1, access: .peerAccess)
            let numbers = SocketHandshake.QueuePairNumbers(queuePairNumber: queuePair.number, creditsTaken: UInt32(room))
            exchange.start(sending: numbers.bytes, receiving: SocketHandshake.QueuePairNumbers.size)
            step = .exchangingQueuePairs(queuePair, hello, peer: peer, gidIndex: gidIndex, offsets: offsets, sendDepth: sendDepth, room: room,
                                         capabilities: capabilities)
            return try advance(over: socket)
        case .exchangingQueuePairs(let queuePair, let hello, let peer, let gidIndex, let offsets, let sendDepth, let room, let capabilities):
            if case let progress = try exchange.advance(on: socket), !progress.isDone { return progress }
            let peerNumbers = try SocketHandshake.QueuePairNumbers(parsing: exchange.incoming, granted: UInt32(credits))
            let peerQueuePair = peerNumbers.queuePairNumber
            try install(queuePair, granted: credits, slotOffsets: offsets, sendDepth: sendDepth, capabilities: capabilities)
            var remote = peer.endpoint
            remote.queuePairNumber = peerQueuePair
            let mtu = ibv_mtu(rawValue: min(UInt32(hello.mtu), UInt32(peer.mtu)))
            try queuePair.moveToReadyToReceive(remote: remote, port: 1, gidIndex: gidIndex, mtu: mtu)
            try queuePair.moveToReadyToSend(packetSequenceNumber: hello.endpoint.packetSequenceNumber, timeout: PeerTimeout.ackTimeout, retryCount: PeerTimeout.retryCount)
            // What a replacement queue pair is brought up with, should this one fail.
            let id = self.id
            events.state.withLock { state in
                state.connections.core(id.rawValue)?.pointee.socketLink = SocketLink(gidIndex: gidIndex, mtu: mtu, peer: peer.endpoint)
            }
            // Both sides have posted their receives: data may flow once the peer says so.
            exchange.start(sending: [SocketHandshake.readyByte], receiving: 1)
            step = .exchangingReady(room: room, grantUsed: Int(peerNumbers.creditsTaken),
                                    peerSlotSize: Int(peer.slotSize), peerLargestMessage: Int(peer.largestMessage))
            return try advance(over: socket)
        case .exchangingReady(let room, let grantUsed, let peerSlotSize, let peerLargestMessage):
            if case let progress = try exchange.advance(on: socket), !progress.isDone { return progress }
            guard exchange.incoming == [SocketHandshake.readyByte] else {
                throw RDMAError(.connectionFailed, operation: "dma_assoc", errno: .protocolError,
                                message: "the peer sent \(exchange.incoming[0]) instead of the handshake's ready byte: is it a DMAIO peer?")
            }
            try finish(credits: room, grantUsed: grantUsed, peerSlotSize: peerSlotSize, peerLargestMessage: peerLargestMessage)
            return .done
        case .done:
            return .done
        case .awaitingEstablished:
            preconditionFailure("a socket association in an rdma_cm step")
        }
    }

    // MARK: - Shared steps

    /// Send-queue depth: data sends for every credit taken, credit updates for every credit
    /// granted, a large message's bind, its invalidation and reads, and spare.
    private static func sendDepth(granting credits: Int, taking taken: Int) -> Int { max(16, 4 * max(credits, taken) + 4) }

    /// The largest message this side accepts, and how much of the area its messages larger
    /// than a slot may hold at once: they are read into blocks of the area
    /// (docs/large-messages.md). By default half the area's largest power of two — the largest
    /// block the allocator can give while the association's slots lie in the other half; at
    /// most `largeMessageBytes` when given (a slot: no large messages).
    private var largestMessage: Int {
        let half = (1 << (Int.bitWidth - 1 - area.size.leadingZeroBitCount)) / 2
        return max(slotSize, min(half, largeMessageBytes ?? half, WireProtocol.largestMessageLimit))
    }

    /// The most one RDMA read of a large message carries: ``ConnectionCore/readPieceLimit``, or
    /// less when the port's `max_msg_sz` says so.
    private var readPiece: Int {
        let reported = (try? area.context.port().maxMessageSize) ?? 0
        return reported >= DMAArea.minimumBlock ? min(reported, ConnectionCore.readPieceLimit) : ConnectionCore.readPieceLimit
    }

    private static func capabilities(sendDepth: Int, receives: Int, pool: SharedReceivePool?) -> QueuePairCapabilities {
        QueuePairCapabilities(maxSendRequests: sendDepth, maxReceiveRequests: pool == nil ? receives : 0, maxInlineData: Connection.inlineLimit)
    }

    /// Takes `count` receive slots and returns their offsets: the pool's, or slots side by
    /// side in one block of the area, so that small slots do not each take a whole allocator
    /// block.
    private mutating func claimSlots(_ count: Int) throws(RDMAError) -> [Int] {
        if let pool {
            try pool.claim(count)
            let id = self.id
            events.state.withLock { state in
                state.connections.core(id.rawValue)?.pointee.pool = pool
                state.connections.core(id.rawValue)?.pointee.poolSlotsClaimed = count
            }
            return pool.slotOffsets
        }
        let bytes = count * slotSize
        let block: Int
        do {
            block = try area.allocate(bytes, for: "dma_assoc")
        } catch {
            throw RDMAError(.areaExhausted, operation: "dma_assoc", errno: .noBufferSpace,
                            message: "the association needs \(bytes) bytes of the area (\(count) slots of \(slotSize) bytes: its own and one per credit of the peer) "
                                + "and the area of \(area.size) bytes has no free block that large: associate fewer receive bytes, or allocate a larger area")
        }
        blocks.append(block)
        return (0..<count).map { block + $0 * slotSize }
    }

    /// Hands the queue pair and the slots to the connection and posts the receives.
    private mutating func install(_ queuePair: QueuePair, granted: Int, slotOffsets: [Int], sendDepth: Int,
                                  capabilities: QueuePairCapabilities) throws(RDMAError) {
        let slots = slotOffsets.count
        let (id, area, pool, slotSize, blocks) = (self.id, self.area, self.pool, self.slotSize, self.blocks)
        try events.state.withLock { state throws(RDMAError) in
            let core = try state.core(id, for: "dma_assoc")
            core.pointee.area = area
            core.pointee.queuePair = queuePair
            core.pointee.slotOffsets = slotOffsets
            core.pointee.slotBlocks = blocks
            core.pointee.slotSize = slotSize
            core.pointee.creditsGranted = granted
            core.pointee.peerCredits = granted
            core.pointee.largestMessage = largestMessage
            core.pointee.readPiece = readPiece
            core.pointee.releasedSlots = ReceiveBatch(capacity: ConnectionCore.repostBatchSize(granting: granted))
            core.pointee.sendQueueFree = sendDepth
            core.pointee.sendDepth = sendDepth
            core.pointee.queuePairCapabilities = capabilities
            core.pointee.slotHeld = [Bool](repeating: false, count: slotOffsets.count)
            core.pointee.arrivals.reserveCapacity(slots)
            core.pointee.inFlight.reserveCapacity(sendDepth)
            core.pointee.pending.reserveCapacity(sendDepth)
            // A large message's queues, sized once: they never grow on the data path.
            core.pointee.awaitingDone.reserveCapacity(sendDepth)
            core.pointee.invalidating.reserveCapacity(sendDepth)
            core.pointee.largeReceives.reserveCapacity(slots)
            core.pointee.windows.reserveCapacity(ConnectionCore.maximumWindows)
            core.pointee.freeWindows.reserveCapacity(ConnectionCore.maximumWindows)
            core.pointee.largeHeld.reserveCapacity(slots)
            if pool == nil {
                for slot in 0..<slots { try core.pointee.postReceive(slot: slot) }
            }
            if let pool { state.attach(id, queuePairNumber: queuePair.number, pool: pool) }
        }
        self.blocks = []  // the connection owns them now
    }

    /// The peer's grant and slot size are known: data may flow. This side takes `peerCredits`
    /// of the peer's grant, and the peer takes `grantUsed` of this side's.
    private mutating func finish(credits peerCredits: Int, grantUsed: Int, peerSlotSize: Int, peerLargestMessage: Int) throws(RDMAError) {
        let id = self.id
        try events.state.withLock { state throws(RDMAError) in
            guard let core = state.connections.core(id.rawValue) else { return }
            // The peer may have sent already (its side was established first): what it spent
            // counts against the grant it took, and a message that broke the protocol meanwhile
            // ends the association here.
            core.pointee.peerCredits -= core.pointee.creditsGranted - grantUsed
            core.pointee.creditsGranted = grantUsed
            core.pointee.creditLimit = peerCredits
            if core.pointee.releasedSlots.isEmpty {
                core.pointee.releasedSlots = ReceiveBatch(capacity: ConnectionCore.repostBatchSize(granting: grantUsed))
            }
            if let failure = core.pointee.failure { throw failure }
            guard core.pointee.peerCredits >= 0, core.pointee.credits == 0 else {
                throw RDMAError(.connectionFailed, operation: "dma_assoc", errno: .protocolError,
                                message: "the peer of \(id) sent more messages than the \(grantUsed) credits it took, or handed credits back before this side sent anything: protocol error (a broken or hostile peer)")
            }
            core.pointee.credits = peerCredits
            core.pointee.peerSlotSize = peerSlotSize
            core.pointee.peerLargestMessage = peerLargestMessage
            core.pointee.windowLimit = min(peerCredits, ConnectionCore.maximumWindows)
            core.pointee.associating = false
        }
        try events.connected(id, cmID: connection.cmID)
        step = .done
    }
}

extension HandshakeProgress {
    var isDone: Bool {
        if case .done = self { return true }
        return false
    }
}
