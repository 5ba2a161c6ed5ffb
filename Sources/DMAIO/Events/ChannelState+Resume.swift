import RDMAVerbs
import SystemPackage

/// A connection whose queue pair failed resumes on a new one (``ConnectionCore/Resumption``):
/// the channel's side of it, lock held.
extension ChannelState {
    /// The queue pair of connected connection `core` failed, or the peer's did (it sent a
    /// resume). Starts the resume and reports `.interrupted`; false when the connection cannot
    /// resume (``ConnectionCore/canResume``): then the caller ends it as before.
    mutating func interrupt(_ core: UnsafeMutablePointer<ConnectionCore>) -> Bool {
        guard core.pointee.status == .connected, core.pointee.canResume, core.pointee.area != nil else { return false }
        let id = core.pointee.id
        // The failed queue pair goes now; its completions still queued name its number, not the
        // new one's, and are dropped (``handle(_:)``). Shared receives it consumed go back to the
        // pool (``handleSharedReceive``), as for a closed connection.
        if let old = core.pointee.queuePair {
            try? old.moveToError()
            if connectionsByQueuePair[old.number] == id.rawValue { connectionsByQueuePair[old.number] = nil }
        }
        core.pointee.queuePair = nil
        core.pointee.status = .interrupted
        events.append(.interrupted(connection: id))
        // The peer's new grant comes with its resume (and its credit updates may come before it).
        core.pointee.credits = 0
        core.pointee.sendQueueFree = core.pointee.sendDepth
        core.pointee.probeOutstanding = false
        if core.pointee.socket != nil {
            interruptOverSocket(core)
        } else {
            interruptOverConnectionManager(core)
        }
        return true
    }

    /// A socket connection's new queue pair is made at once, its free slots posted, and this
    /// side's resume sent.
    private mutating func interruptOverSocket(_ core: UnsafeMutablePointer<ConnectionCore>) {
        let id = core.pointee.id
        do throws(RDMAError) {
            let queuePair = try QueuePair(
                protectionDomain: core.pointee.area!.protectionDomain, sendQueue: io.completionQueue.with { $0 },
                receiveQueue: io.completionQueue.with { $0 }, capabilities: core.pointee.queuePairCapabilities,
                sharedReceiveQueue: core.pointee.pool?.queue)
            try queuePair.moveToInit(port: 1, access: .peerAccess)
            let credits = try installReplacement(queuePair, in: core)
            let packetSequenceNumber = UInt32.random(in: 0...0xFF_FFFF)
            let resume = SocketHandshake.Resume(
                messagesReceived: UInt64(truncatingIfNeeded: core.pointee.arrived), credits: UInt32(credits),
                queuePairNumber: queuePair.number, packetSequenceNumber: packetSequenceNumber)
            var resumption = ConnectionCore.Resumption(began: .now, step: .exchangingCounts(packetSequenceNumber: packetSequenceNumber))
            resumption.exchange.start(sending: resume.bytes, receiving: SocketHandshake.Resume.size)
            core.pointee.resumption = resumption
        } catch {
            giveUp(core, after: RDMAError(error.code, operation: error.operation, errno: error.errno,
                                          message: "\(id) could not resume after its queue pair failed: \(error.message)"))
            return
        }
        advanceResumption(core)
    }

    /// Makes `queuePair` `core`'s replacement for the failed one: shared receives routed to it,
    /// every free private slot posted on it. Credits owed and slots gathered for re-posting are
    /// folded into the new grant; returns it, the credits the peer holds from now (its messages
    /// may arrive on the new queue pair before its resume is read).
    mutating func installReplacement(_ queuePair: QueuePair, in core: UnsafeMutablePointer<ConnectionCore>) throws(RDMAError) -> Int {
        core.pointee.queuePair = queuePair
        if let pool = core.pointee.pool { attach(core.pointee.id, queuePairNumber: queuePair.number, pool: pool) }
        core.pointee.releasedSlots = ReceiveBatch(capacity: ConnectionCore.repostBatchSize(granting: core.pointee.creditsGranted))
        core.pointee.creditsToReturn = 0
        for slot in core.pointee.freeSlots() { try core.pointee.postReceive(slot: slot) }
        let credits = core.pointee.restartCredits
        core.pointee.peerCredits = credits
        return credits
    }

    /// Goes on with the resume of `core` as far as the socket allows: called when the socket is
    /// readable (the peer's resume, or its ready byte).
    mutating func advanceResumption(_ core: UnsafeMutablePointer<ConnectionCore>) {
        guard core.pointee.status == .interrupted, var resumption = core.pointee.resumption,
              let socket = core.pointee.socket, let link = core.pointee.socketLink, let queuePair = core.pointee.queuePair
        else { return }
        do throws(RDMAError) {
            while try resumption.exchange.advance(on: socket).isDone {
                switch resumption.step {
                case .exchangingCounts(let packetSequenceNumber):
                    let peer = try SocketHandshake.Resume(parsing: resumption.exchange.incoming, creditLimit: core.pointee.creditLimit)
                    var remote = link.peer
                    remote.queuePairNumber = peer.queuePairNumber
                    remote.packetSequenceNumber = peer.packetSequenceNumber
                    try queuePair.moveToReadyToReceive(remote: remote, port: 1, gidIndex: link.gidIndex, mtu: link.mtu)
                    try queuePair.moveToReadyToSend(packetSequenceNumber: packetSequenceNumber, timeout: PeerTimeout.ackTimeout,
                                                    retryCount: PeerTimeout.retryCount)
                    resumption.exchange.start(sending: [SocketHandshake.readyByte], receiving: 1)
                    resumption.step = .exchangingReady(peer: peer)
                case .exchangingReady(let peer):
                    guard resumption.exchange.incoming == [SocketHandshake.readyByte] else {
                        throw RDMAError(.connectionFailed, operation: "dma_assoc", errno: .protocolError,
                                        message: "the peer sent \(resumption.exchange.incoming[0]) instead of the resume's ready byte: protocol error")
                    }
                    core.pointee.resumption = nil
                    try resumed(core, messagesReceived: peer.messagesReceived, credits: peer.credits)
                    return
                case .resolving, .connecting, .retrying, .awaitingPeer, .accepting:
                    return  // rdma_cm steps: not a socket's
                }
            }
            core.pointee.resumption = resumption
        } catch {
            // The peer's end of the socket closed (its program closed the connection, or died):
            // that is the connection's end, as it is while connected.
            if error.errno == .connectionReset {
                giveUp(core, after: nil)
            } else {
                giveUp(core, after: error)
            }
        }
    }

    /// Both queue pairs are ready: the peer's unreceived messages go out again, and data flows.
    mutating func resumed(_ core: UnsafeMutablePointer<ConnectionCore>, messagesReceived: UInt64, credits: UInt32) throws(RDMAError) {
        try core.pointee.replay(peerReceived: messagesReceived, into: &events)
        core.pointee.credits += Int(credits)
        core.pointee.status = .connected
        core.pointee.activity &+= 1
        events.append(.resumed(connection: core.pointee.id))
        pumpSends(core)
    }

    /// Ends an interrupted connection: the peer left (`error` nil), the resume failed, or its
    /// deadline passed. Its sends still in flight are reported failed, then it ends as any
    /// connection does.
    mutating func giveUp(_ core: UnsafeMutablePointer<ConnectionCore>, after error: RDMAError?) {
        if let error { core.pointee.failure = core.pointee.failure ?? error }
        peerWentAway(core)
    }

    /// Gives up the interrupted connections whose deadline passed (``PeerTimeout/resumeDeadline``):
    /// from the keepalive sweep.
    mutating func giveUpOverdueResumptions(now: MonotonicInstant) {
        retryDueResumptions(now: now)
        for raw in connections.identifiers {
            guard let core = connections.core(raw), core.pointee.status == .interrupted, let resumption = core.pointee.resumption,
                  now >= resumption.began + core.pointee.resumeDeadline
            else { continue }
            giveUp(core, after: RDMAError(
                .connectionFailed, operation: "dma_assoc", errno: .timedOut,
                message: "\(core.pointee.id) was interrupted (its queue pair failed) and the peer did not resume it within \(core.pointee.resumeDeadline): the peer's host or the link to it is down"))
        }
    }
}
