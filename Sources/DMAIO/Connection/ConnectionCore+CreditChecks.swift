import RDMAVerbs

/// The credit protocol, checked at the receiver (``WireProtocol``): a peer that ignores it — a
/// broken implementation or a hostile one — is cut off at its first message that breaks it, and
/// only its connection ends. Each message costs a subtraction and two comparisons.
extension ConnectionCore {
    /// Counts a received message against the credit protocol: a data message (a rendezvous
    /// request included) spends one of the credits the peer holds, and the credits it hands
    /// back must have been spent. Returns the error that ends the connection when the message
    /// breaks the protocol, nil otherwise.
    ///
    /// - A data message when the peer holds no credit: it would take a slot promised to another
    ///   message (on a shared pool, another connection's).
    /// - A credit update that hands back no credit: an honest update always hands back at
    ///   least one, which is what bounds the updates in flight by the room the other side made.
    /// - Credits beyond those this side spent: an inflated sender would overrun the peer.
    @inline(__always)
    mutating func creditViolation(credits returned: Int, dones: Int, isCreditUpdate: Bool) -> RDMAError? {
        if isCreditUpdate {
            // (One with dones and no credit is refused by the dones' own check.)
            if returned == 0 && dones == 0 { return protocolViolation("sent a credit update that hands back no credit") }
        } else {
            peerCredits -= 1
            if peerCredits < 0 {
                return protocolViolation("sent a message beyond the \(creditsGranted) credits it was granted (it holds none)")
            }
        }
        if returned > 0, credits + returned > creditLimit {
            return protocolViolation("handed back \(returned) credits when only \(creditLimit - credits) of the \(creditLimit) this side holds were spent")
        }
        return nil
    }

    /// The error that ends a connection whose peer broke the credit protocol.
    @inline(never)
    private func protocolViolation(_ what: String) -> RDMAError {
        RDMAError(.connectionFailed, operation: "ibv_poll_cq", errno: .protocolError,
                  message: "the peer of \(id) \(what): protocol error (it does not follow DMAIO's flow control: a broken or hostile peer); the connection ended")
    }
}
