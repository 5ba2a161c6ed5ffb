@testable import DMAIO
import Foundation
import RDMAVerbs
import Testing

extension RxeIntegration {
    /// Dead peers are found even by a side with nothing in flight (see `PeerTimeout`).
    @Suite struct KeepAlive {
        init() throws { try RxeEnvironment.requireRxeDevice() }

        /// A peer that goes silent — its queue pair in the error state drops every packet without
        /// an answer, as a dead host would — is found by the keepalive although this side has
        /// nothing in flight: a disconnect within the documented 2 × 2 s + 1.9 s.
        @Test func keepaliveFindsASilentPeer() throws {
            let pair = try ConnectedPair(transport: .tcpSocket)  // no rdma_cm: nothing but silence
            try #require(pair.server.queuePair != nil)
            try pair.server.queuePair!.moveToError()
            let start = ContinuousClock.now
            var seen: Duration? = nil
            while seen == nil, ContinuousClock.now - start < .seconds(20) {
                if case .disconnected = try pair.clientEvents.wait(timeout: .seconds(1)) { seen = ContinuousClock.now - start }
            }
            let elapsed = try #require(seen, "no disconnect within 20 s of the peer going silent")
            print("keepalive: silent peer seen after \(elapsed)")
            #expect(elapsed < .seconds(8), "the silent peer was seen after \(elapsed)")
            #expect(!pair.client.isConnected)
        }

    }
}
