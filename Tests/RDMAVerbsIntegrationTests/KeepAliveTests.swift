@testable import DMAIO
import Foundation
import RDMAVerbs
import Testing

extension RxeIntegration {
    /// Dead peers are found even by a side with nothing in flight (see `PeerTimeout`).
    @Suite struct KeepAlive {
        init() throws { try RxeEnvironment.requireRxeDevice() }

        /// A peer that goes silent — its queue pair in the error state drops every packet without
        /// an answer, as a dead host would, and it never answers the resume — is found by the
        /// keepalive although this side has nothing in flight: the connection is interrupted
        /// within the documented 2 × 2 s + 1.9 s, and given up once its resume deadline passed
        /// (within one keepalive sweep after it).
        @Test func keepaliveFindsASilentPeer() throws {
            let pair = try ConnectedPair(transport: .tcpSocket)  // no rdma_cm: nothing but silence
            pair.client.resumeDeadline = .seconds(1)
            pair.server.stopWatchingSocketForTesting()
            try #require(pair.server.queuePair != nil)
            try pair.server.queuePair!.moveToError()
            let start = ContinuousClock.now
            var interrupted: Duration? = nil, seen: Duration? = nil
            while seen == nil, ContinuousClock.now - start < .seconds(20) {
                switch try pair.clientEvents.wait(timeout: .seconds(1)) {
                case .interrupted?: interrupted = ContinuousClock.now - start
                case .disconnected?: seen = ContinuousClock.now - start
                default: break
                }
            }
            let found = try #require(interrupted, "the silent peer was never noticed")
            let elapsed = try #require(seen, "no disconnect within 20 s of the peer going silent")
            print("keepalive: silent peer noticed after \(found), given up after \(elapsed)")
            #expect(found < .seconds(8), "the silent peer was noticed after \(found)")
            #expect(elapsed - found < .seconds(1) + PeerTimeout.keepAliveInterval + .seconds(1), "given up \(elapsed - found) after the interruption")
            #expect(!pair.client.isConnected)
        }

    }
}
