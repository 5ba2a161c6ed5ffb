import CRDMA
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

/// The resume of an rdma_cm connection (``ConnectionCore/Resumption``), lock held.
///
/// A server's rdma_cm connections resume through a *resume listener* of their event channel:
/// a listening id on the channel's own rdma_cm channel, one per local address, made with the
/// first such connection. Its port and a token naming the connection travel in the server's
/// hello. When a queue pair fails, the client connects a new id to that port with a
/// ``WireProtocol/ResumeRequest`` (the token and its counts); the server finds the connection by
/// the token, accepts on the new id with its own counts, and both go on over the new id's queue
/// pair. The program's listener is not involved: a server that no longer accepts still resumes.
/// The old ids stay until the connection goes (``ConnectionCore/retiredIDs``), so neither side's
/// old id sends the other a disconnect.
extension ChannelState {
    /// How long one try of the client's resolve or connect may take, and how long it waits
    /// before the next when one failed (the link may still be down).
    static let resumeAttemptTimeout = Duration.seconds(2)
    static let resumeRetryDelay = Duration.seconds(1)

    /// A server connection's resume token and the port of its resume listener (made on first
    /// need), for its hello; nil when no listener could be made (it then does not resume).
    mutating func prepareResume(_ id: Connection.ID, localAddress: SocketAddress?) -> (token: UInt64, port: UInt16)? {
        guard let core = connections.core(id.rawValue), let host = localAddress?.host else { return nil }
        let listener: ConnectionID
        if let existing = resumeListeners[host] {
            listener = existing.id
        } else {
            guard let made = try? ConnectionID(channel: io.connectionEvents.with { $0 }),
                  let address = try? SocketAddress(host: host, port: 0),
                  (try? made.bind(to: address)) != nil, (try? made.listen(backlog: 64)) != nil
            else { return nil }
            resumeListeners[host] = (made, 0)
            listener = made
        }
        guard let port = listener.localAddress?.port, port != 0 else { return nil }
        var token: UInt64
        repeat { token = .random(in: 1...UInt64.max) } while connectionsByToken[token] != nil
        connectionsByToken[token] = id.rawValue
        resumeListeners[host]!.users += 1
        core.pointee.resumeToken = token
        core.pointee.resumePort = port
        core.pointee.resumeHost = host
        return (token, port)
    }

    /// A server connection closed: its token names nothing now, and a resume listener that no
    /// open connection uses goes (its rdma_cm id with it).
    mutating func forgetResumeToken(_ core: UnsafeMutablePointer<ConnectionCore>) {
        guard core.pointee.resumeToken != 0, let host = core.pointee.resumeHost else { return }
        connectionsByToken[core.pointee.resumeToken] = nil
        core.pointee.resumeHost = nil
        resumeListeners[host]?.users -= 1
        if resumeListeners[host]?.users == 0 { resumeListeners[host] = nil }
    }

    /// The queue pair of rdma_cm connection `core` failed: it goes now (its id stays until the
    /// connection resumed); the client starts its first try, the server waits for it.
    mutating func interruptOverConnectionManager(_ core: UnsafeMutablePointer<ConnectionCore>) {
        core.pointee.resumption = ConnectionCore.Resumption(began: .now, step: .awaitingPeer)
        if core.pointee.resumesActively { startResumeAttempt(core) }
    }

    /// The client's next try: a new id resolves the server's resume listener.
    mutating func startResumeAttempt(_ core: UnsafeMutablePointer<ConnectionCore>) {
        guard let old = core.pointee.cmID, let peer = old.peerAddress, core.pointee.resumption != nil else { return }
        do throws(RDMAError) {
            let attempt = try ConnectionID(channel: io.connectionEvents.with { $0 })
            let destination = try SocketAddress(host: peer.host, port: core.pointee.resumePort)
            let source = try old.localAddress.map { local throws(RDMAError) in try SocketAddress(host: local.host, port: 0) }
            connectionsByCMID[attempt.id] = core.pointee.id.rawValue
            core.pointee.resumption!.step = .resolving(attempt)
            try attempt.startResolvingAddress(of: destination, from: source, timeout: Self.resumeAttemptTimeout)
        } catch {
            retryResumeLater(core)
        }
    }

    /// The client's try failed: its id goes, and the next try starts after a pause.
    private mutating func retryResumeLater(_ core: UnsafeMutablePointer<ConnectionCore>) {
        dropAttempt(core)
        core.pointee.resumption?.step = .retrying(at: .now + Self.resumeRetryDelay)
    }

    /// Lets go of the new id of a resume's try and of the queue pair made on it.
    mutating func dropAttempt(_ core: UnsafeMutablePointer<ConnectionCore>) {
        guard let attempt = core.pointee.resumption?.attempt else { return }
        connectionsByCMID[attempt.id] = nil
        if let queuePair = core.pointee.queuePair, queuePair.connectionID === attempt {
            if connectionsByQueuePair[queuePair.number] == core.pointee.id.rawValue { connectionsByQueuePair[queuePair.number] = nil }
            core.pointee.queuePair = nil
        }
    }

    /// Starts the tries whose pause is over: from the keepalive sweep.
    mutating func retryDueResumptions(now: MonotonicInstant) {
        for raw in connections.identifiers {
            guard let core = connections.core(raw), core.pointee.status == .interrupted,
                  case .retrying(let at)? = core.pointee.resumption?.step, now >= at
            else { continue }
            startResumeAttempt(core)
        }
    }

    /// An rdma_cm event about interrupted connection `core`: on its old id (the peer went
    /// away) or on the new id of its resume.
    mutating func resumeEvent(_ event: ConnectionEvent, core: UnsafeMutablePointer<ConnectionCore>) {
        if core.pointee.cmID?.id == event.id {
            // The peer's old id went (its program closed the connection or died): it does not
            // come back.
            if event.kind == .disconnected || event.kind == .deviceRemoval { giveUp(core, after: nil) }
            return
        }
        guard let resumption = core.pointee.resumption, let attempt = resumption.attempt, attempt.id == event.id else { return }
        do throws(RDMAError) {
            switch (resumption.step, event.kind) {
            case (.resolving, .addressResolved):
                try attempt.startResolvingRoute(timeout: Self.resumeAttemptTimeout)
            case (.resolving, .routeResolved):
                let credits = try makeQueuePair(core, on: attempt)
                let request = WireProtocol.ResumeRequest(
                    token: core.pointee.resumeToken, messagesReceived: UInt64(truncatingIfNeeded: core.pointee.arrived), credits: UInt32(credits))
                try attempt.setAckTimeout(PeerTimeout.ackTimeout)
                try attempt.startConnecting(ConnectionParameters(privateData: request.bytes, responderResources: 1, initiatorDepth: 1,
                                                                 retryCount: PeerTimeout.retryCount))
                core.pointee.resumption!.step = .connecting(attempt)
            case (.connecting, .established):
                guard let peer = WireProtocol.ResumeRequest(parsing: event.privateData), peer.token == core.pointee.resumeToken,
                      peer.credits <= UInt32(core.pointee.creditLimit)
                else {
                    throw RDMAError(.connectionFailed, operation: "rdma_connect", errno: .protocolError,
                                    message: "the server's answer to the resume of \(core.pointee.id) is not a valid resume: protocol error")
                }
                try resumedOverConnectionManager(core, on: attempt, peer: peer)
            case (.accepting(_, let peer), .established):
                try resumedOverConnectionManager(core, on: attempt, peer: peer)
            case (.connecting, .rejected):
                // The server's listener is there and says no (it no longer knows the
                // connection), or nothing listens (its program ended): it does not come back.
                giveUp(core, after: RDMAError(.connectionFailed, operation: "rdma_connect", errno: .connectionRefused,
                                              message: "the peer of \(core.pointee.id) refused its resume: it closed the connection, or its program ended"))
            case (.accepting, _):
                // The client's try failed; it tries again with a new request.
                dropAttempt(core)
                core.pointee.resumption?.step = .awaitingPeer
            case (_, .addressError), (_, .routeError), (_, .unreachable), (_, .connectError), (_, .disconnected):
                retryResumeLater(core)
            default:
                break
            }
        } catch {
            if core.pointee.resumesActively && error.errno != .protocolError {
                retryResumeLater(core)
            } else {
                giveUp(core, after: error)
            }
        }
    }

    /// A connect request on a resume listener: the client of a connection of this channel
    /// resumes it. Accepted on the request's new id when the token names a connection that can
    /// resume; refused otherwise.
    mutating func takeResumeRequest(_ event: ConnectionEvent) {
        guard let request = event.request else { return }
        guard let resume = WireProtocol.ResumeRequest(parsing: event.privateData), let raw = connectionsByToken[resume.token],
              let core = connections.core(raw), core.pointee.isOpen, !core.pointee.resumesActively,
              resume.credits <= UInt32(core.pointee.creditLimit)
        else {
            try? request.reject(privateData: WireProtocol.Refusal(errno: ENOENT).bytes)
            return
        }
        // The client's queue pair failed first: this side's goes too.
        if core.pointee.status == .connected, !interrupt(core) {
            try? request.reject(privateData: WireProtocol.Refusal(errno: EPROTO).bytes)
            return
        }
        // A try of the client's that this side accepted and that never completed gives way.
        dropAttempt(core)
        do throws(RDMAError) {
            let credits = try makeQueuePair(core, on: request)
            let answer = WireProtocol.ResumeRequest(
                token: resume.token, messagesReceived: UInt64(truncatingIfNeeded: core.pointee.arrived), credits: UInt32(credits))
            connectionsByCMID[request.id] = raw
            core.pointee.resumption?.step = .accepting(request, peer: resume)
            try request.setAckTimeout(PeerTimeout.ackTimeout)
            try request.startAccepting(ConnectionParameters(privateData: answer.bytes, responderResources: 1, initiatorDepth: 1,
                                                            retryCount: PeerTimeout.retryCount))
        } catch {
            dropAttempt(core)
            connectionsByCMID[request.id] = nil
            core.pointee.resumption?.step = .awaitingPeer
        }
    }

    /// Creates the new queue pair on `id` and posts the free slots on it; the credits the peer
    /// holds on it.
    private mutating func makeQueuePair(_ core: UnsafeMutablePointer<ConnectionCore>, on id: ConnectionID) throws(RDMAError) -> Int {
        guard let area = core.pointee.area else {
            throw RDMAError(.notConnected, operation: "dma_assoc", errno: .badFileDescriptor, message: "\(core.pointee.id) has no area")
        }
        let queuePair = try id.createQueuePair(
            protectionDomain: area.protectionDomain, sendQueue: io.completionQueue.with { $0 }, receiveQueue: io.completionQueue.with { $0 },
            capabilities: core.pointee.queuePairCapabilities, sharedReceiveQueue: core.pointee.pool?.queue)
        return try installReplacement(queuePair, in: core)
    }

    /// The new id is established: it carries the connection from now on.
    private mutating func resumedOverConnectionManager(
        _ core: UnsafeMutablePointer<ConnectionCore>, on id: ConnectionID, peer: WireProtocol.ResumeRequest
    ) throws(RDMAError) {
        try core.pointee.queuePair?.setRemoteAccess(.peerAccess)
        if let old = core.pointee.cmID {
            connectionsByCMID[old.id] = nil
            // Kept until the connection goes: destroyed now, it would disconnect its peer id,
            // which the peer may still hold while its side of this resume completes.
            core.pointee.retiredIDs.append(old)
        }
        connectionsByCMID[id.id] = core.pointee.id.rawValue
        core.pointee.endpoint = .connectionManager(id)
        core.pointee.resumption = nil
        try resumed(core, messagesReceived: peer.messagesReceived, credits: peer.credits)
    }
}
