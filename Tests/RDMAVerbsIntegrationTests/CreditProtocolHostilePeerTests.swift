@testable import DMAIO
import Foundation
import RDMAVerbs
import Testing

/// Peers that ignore the credit protocol (``WireProtocol``): each is cut off at its first message
/// that breaks it, with a reason, and the other connections of the same channel — and of the
/// same shared receive pool — go on. A peer's announcement never decides how much of the
/// server's area it gets. The hostile side posts raw work requests on its connection's queue
/// pair, or sends a hand-made connection request.
extension RxeIntegration {
    @Suite struct CreditProtocolHostilePeer {
        init() throws { try RxeEnvironment.requireRxeDevice() }

        /// Posts a zero-length message with `immediate` straight on `connection`'s queue pair,
        /// credits or not.
        static func post(on connection: Connection, immediate: UInt32) throws {
            let queuePair = try #require(connection.queuePair)
            try queuePair.postSend(ScatterGatherElement(address: 0, length: 0, localKey: 0),
                                   requestID: LargeMessageHostilePeer.strayRequest, operation: .sendWithImmediate(immediate))
        }

        /// Takes `connection`'s messages until it ends; returns how many it handed out and the
        /// error its calls give after the end (nil if it did not end within 10 s). Its channel's
        /// events are taken meanwhile, its `.disconnected` included (the other connections of
        /// the channel are idle).
        static func messagesUntilTheEnd(of connection: Connection) throws -> (messages: Int, end: RDMAError?) {
            var messages = 0
            let deadline = ContinuousClock.now + .seconds(10)
            while ContinuousClock.now < deadline {
                do {
                    if let message = try connection.receive() {
                        messages += 1
                        message.release()
                        continue
                    }
                } catch {
                    while let event = try connection.events.next() {
                        if case .disconnected(let id) = event { #expect(id == connection.id, "another connection ended: \(id)") }
                    }
                    return (messages, error)
                }
                _ = try connection.events.wait(timeout: .milliseconds(100))
            }
            return (messages, nil)
        }

        /// A client on a shared pool that sends its 4 credits' worth and 4 messages more: the
        /// server hands out the 4, and ends the connection at the fifth, saying why; the 4 beyond
        /// go straight back to the pool. An honest client of the same pool (exactly as many slots
        /// as the two claimed) then streams 400 messages, none of which meets a
        /// receiver-not-ready answer.
        @Test func aMessageBeyondTheGrantEndsOnlyItsConnection() throws {
            let serverEvents = try EventChannel()
            let serverArea = try DMAArea(size: 4 << 20)
            let pool = try SharedReceivePool(area: serverArea, receiveBytes: 16 * 4096, slotSize: 4096)
            let (hostileEvents, hostileArea) = (try EventChannel(), try DMAArea(size: 1 << 20))
            let (honestEvents, honestArea) = (try EventChannel(), try DMAArea(size: 1 << 20))
            let hostile = try ConnectedPair.connect(client: (hostileEvents, hostileArea), toPool: pool, serverEvents: serverEvents, credits: 4)
            let honest = try ConnectedPair.connect(client: (honestEvents, honestArea), toPool: pool, serverEvents: serverEvents, credits: 4)
            defer {
                for connection in [hostile.client, hostile.server, honest.client, honest.server] { connection.close() }
            }
            #expect(pool.unclaimedSlots == 0, "each connection claims its 4 credits and room for 4 credit updates")

            for _ in 0..<8 { try Self.post(on: hostile.client, immediate: 0) }
            let (messages, end) = try Self.messagesUntilTheEnd(of: hostile.server)
            #expect(messages == 4, "the server handed out \(messages) of the hostile client's messages; its grant was 4")
            let error = try #require(end, "the server's connection to the hostile client did not end")
            #expect(error.code == .disconnected)
            #expect(error.message.contains("sent a message beyond the 4 credits it was granted"), "\(error.message)")

            let rejectedBefore = RxeEnvironment.counter("rcvd_rnr_err")
            let sizes = (0..<400).map { 1 + $0 * 37 % 4096 }
            let (received, sent) = try RxeIntegration.LargeMessages.exchange(
                sizes, from: honest.client, area: honestArea, to: honest.server, receiverArea: serverArea)
            #expect(received == sizes.count && sent.count == sizes.count)
            #expect(RxeEnvironment.counter("rcvd_rnr_err") == rejectedBefore, "the honest client met receiver-not-ready answers")
        }

        /// A peer that hands back credits that were never spent (1,000 of them, none spent), or
        /// a credit update that hands back none, ends its connection with a reason; another
        /// connection of the same server channel goes on.
        @Test(arguments: [(UInt32(1000), "handed back 1000 credits when only 0 of the 8 this side holds were spent"),
                          (UInt32(0), "sent a credit update that hands back no credit")])
        func creditsNeverSpentEndOnlyThatConnection(returned: UInt32, reason: String) throws {
            let pair = try ConnectedPair(areaSize: 4 << 20, receiveBytes: 8 * 4096, slotSize: 4096)
            let (otherEvents, otherArea) = (try EventChannel(), try DMAArea(size: 4 << 20))
            let other = try ConnectedPair.connect(client: (otherEvents, otherArea), server: (pair.serverEvents, pair.serverArea),
                                                  receiveBytes: 8 * 4096, slotSize: 4096)
            defer {
                other.client.close()
                other.server.close()
            }
            try Self.post(on: pair.client, immediate: WireProtocol.immediate(returning: returned, creditUpdate: true))
            let (messages, end) = try Self.messagesUntilTheEnd(of: pair.server)
            #expect(messages == 0)
            let error = try #require(end, "the server's connection to the hostile client did not end")
            #expect(error.code == .disconnected)
            #expect(error.message.contains(reason), "\(error.message)")
            #expect(error.message.contains("protocol error"), "\(error.message)")

            // The server's other connection still carries messages both ways.
            for (from, fromArea, to, toArea) in [(other.client, otherArea, other.server, pair.serverArea), (other.server, pair.serverArea, other.client, otherArea)] {
                let (received, sent) = try RxeIntegration.LargeMessages.exchange(Array(repeating: 100, count: 50), from: from, area: fromArea,
                                                                                 to: to, receiverArea: toArea)
                #expect(received == 50 && sent.count == 50)
            }
        }

        /// A client that announces 1,000 credits (which, taken at its word, would have the
        /// server set aside 1,008 slots — its whole 4 MiB area) gets as much of the area as the
        /// server grants itself: 8 slots and room for 8 credit updates. An honest client then
        /// gets in beside it; the hostile request, never completed, times out and gives back what
        /// it took.
        @Test func aClientsAnnouncedGrantDoesNotDecideWhatTheServerSetsAside() throws {
            let serverEvents = try EventChannel()
            let serverArea = try DMAArea(size: 4 << 20)
            let address = "\(RxeEnvironment.address):\(RxeEnvironment.freshPort())"
            let listener = try Listener(on: address, events: serverEvents)
            let hostile = try HalfOpenPeer(connectingTo: address, announcing: 0x2000, credits: 1000)
            let request = try listener.accept(timeout: .seconds(10))
            let association = OnThread { try request.associate(serverArea, receiveBytes: 8 * 4096, slotSize: 4096, timeout: .seconds(4)) }
            let deadline = ContinuousClock.now + .seconds(3)
            while serverArea.bytesInUse == 0, ContinuousClock.now < deadline { usleep(10_000) }
            #expect(serverArea.bytesInUse == 16 * 4096, "the server set aside \(serverArea.bytesInUse) bytes for a client that announced 1,000 credits")

            let (honestEvents, honestArea) = (try EventChannel(), try DMAArea(size: 4 << 20))
            let honest = try ConnectedPair.connect(client: (honestEvents, honestArea), server: (serverEvents, serverArea),
                                                   receiveBytes: 8 * 4096, slotSize: 4096)
            defer {
                honest.client.close()
                honest.server.close()
            }
            let (received, sent) = try RxeIntegration.LargeMessages.exchange(Array(repeating: 64, count: 50), from: honest.client,
                                                                             area: honestArea, to: honest.server, receiverArea: serverArea)
            #expect(received == 50 && sent.count == 50)

            #expect { try association.join() } throws: { ($0 as? RDMAError)?.code == .timedOut }
            #expect(serverArea.bytesInUse == 16 * 4096, "after the hostile request timed out only the honest connection's slots are in use")
            withExtendedLifetime(hostile) {}
        }
    }
}
