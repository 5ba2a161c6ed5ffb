import RDMAVerbs

extension EventChannel {
    /// Probes the connections that saw no completion since the last sweep, one probe each at a
    /// time (see ``PeerTimeout``): a zero-length RDMA write that the peer's device must
    /// acknowledge. A probe that fails ends the connection like any failed send. Called from
    /// the pump's rare path and from every 16th empty ``next()``; does its work at most once per
    /// ``PeerTimeout/keepAliveInterval``. Lock held.
    func probeQuietConnectionsLocked() {
        let now = MonotonicInstant.now
        guard now >= nextKeepAliveSweep else { return }
        nextKeepAliveSweep = now + PeerTimeout.keepAliveInterval
        for state in connections.states where state.status == .connected {
            guard state.activity == state.activitySeen else {
                state.activitySeen = state.activity
                continue
            }
            guard !state.probeOutstanding, state.sendQueueFree > 0, let queuePair = state.queuePair else { continue }
            do {
                try queuePair.postZeroLengthWrite(requestID: state.requestID(.creditUpdate, slot: ConnectionState.probeSlot))
                state.sendQueueFree -= 1
                state.probeOutstanding = true
            } catch {
                // A queue pair that takes no more work is in error: its failures are on the way.
            }
        }
    }
}
