import RDMAVerbs

extension ChannelState {
    /// Probes the connections that saw no completion since the last sweep, one probe each at a
    /// time (see ``PeerTimeout``): a zero-length RDMA write that the peer's device must
    /// acknowledge. A probe that fails ends the connection like any failed send. The watcher
    /// thread calls it every ``PeerTimeout/keepAliveInterval``; it does its work at most that
    /// often.
    mutating func probeQuietConnections() {
        let now = MonotonicInstant.now
        guard now >= nextKeepAliveSweep else { return }
        nextKeepAliveSweep = now + (PeerTimeout.keepAliveInterval - .milliseconds(100))
        giveUpOverdueResumptions(now: now)
        for raw in connections.identifiers {
            guard let core = connections.core(raw), core.pointee.status == .connected else { continue }
            guard core.pointee.activity == core.pointee.activitySeen else {
                core.pointee.activitySeen = core.pointee.activity
                continue
            }
            guard !core.pointee.probeOutstanding, core.pointee.sendQueueFree > 0, let queuePair = core.pointee.borrowedQueuePair else { continue }
            let request = core.pointee.requestID(.creditUpdate, slot: ConnectionCore.probeSlot)
            do {
                try queuePair.with { queuePair throws(RDMAError) in try queuePair.postZeroLengthWrite(requestID: request) }
                core.pointee.sendQueueFree -= 1
                core.pointee.probeOutstanding = true
            } catch {
                // A queue pair that takes no more work is in error: its failures are on the way.
            }
        }
    }
}
