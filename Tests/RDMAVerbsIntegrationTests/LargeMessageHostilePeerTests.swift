import CRDMA
@testable import DMAIO
import Foundation
import RDMAVerbs
import Testing

/// Large messages against a peer that breaks the rendezvous: requests with a bad key or a bad
/// length, and a read with a key after its message was reported sent. The hostile side posts
/// raw work requests on its connection's queue pair.
extension RxeIntegration {
    @Suite struct LargeMessageHostilePeer {
        init() throws { try RxeEnvironment.requireRxeDevice() }

        /// A work request id no connection of the hostile side answers to: its completion is
        /// ignored there.
        static let strayRequest = UInt64(0x3FFF_FFFF) << 32

        /// Posts a rendezvous request (a data message, bit 30 set) describing `length` bytes at
        /// `address` under `key`, straight on `connection`'s queue pair.
        static func postRequest(on connection: Connection, length: UInt64, address: UInt64, key: UInt32) throws {
            let queuePair = try #require(connection.queuePair)
            var descriptor: (UInt64, UInt64, UInt64) = (0, 0, 0)
            try withUnsafeMutableBytes(of: &descriptor) { bytes in
                WireProtocol.RendezvousRequest(length: length, address: address, key: key).write(to: bytes.baseAddress!)
                try queuePair.postSend(
                    ScatterGatherElement(address: UInt64(UInt(bitPattern: bytes.baseAddress!)), length: 24, localKey: 0),
                    requestID: strayRequest,
                    operation: .sendWithImmediate(WireProtocol.immediate(returning: 0, creditUpdate: false, rendezvous: true)),
                    inline: true)
            }
        }

        /// Two hostile clients and an honest one on one server channel: a request whose key
        /// reads nothing, and one larger than the server accepts, each end only their own
        /// connection (with a reason); the honest client's large messages go on.
        @Test func aMalformedRequestEndsOnlyItsConnection() throws {
            let serverEvents = try EventChannel()
            let serverArea = try DMAArea(size: 16 << 20)
            let address = "\(RxeEnvironment.address):\(RxeEnvironment.freshPort())"
            let listener = try Listener(on: address, events: serverEvents)
            let accepted = OnThread { () throws -> [Connection] in
                try (0..<3).map { _ in
                    let connection = try listener.accept(timeout: .seconds(10))
                    try connection.associate(serverArea, receiveBytes: 8 * 4096, slotSize: 4096)
                    return connection
                }
            }
            let clients = try (0..<3).map { _ -> (Connection, DMAArea) in
                let events = try EventChannel()
                let area = try DMAArea(size: 16 << 20)
                let connection = try Connection(to: address, events: events)
                try connection.associate(area, receiveBytes: 8 * 4096, slotSize: 4096)
                return (connection, area)
            }
            let servers = try accepted.join()
            defer {
                for (connection, _) in clients { connection.close() }
                for connection in servers { connection.close() }
            }
            let (badKey, badLength, honest) = (clients[0], clients[1], clients[2])
            let base = UInt64(UInt(bitPattern: badKey.1.address(0)))
            try Self.postRequest(on: badKey.0, length: 1 << 20, address: base, key: 0xDEAD_BE00)
            try Self.postRequest(on: badLength.0, length: 64 << 20, address: base, key: 1)

            // The server's connections to the two hostile clients end, each with its reason.
            var ended: [Connection.ID: String] = [:]
            let deadline = ContinuousClock.now + .seconds(20)
            while ended.count < 2, ContinuousClock.now < deadline {
                guard let event = try serverEvents.wait(timeout: .milliseconds(200)) else { continue }
                if case .disconnected(let id) = event, let server = servers.first(where: { $0.id == id }) {
                    do { _ = try server.receive() } catch { ended[id] = error.message }
                }
            }
            #expect(ended.count == 2, "ended: \(ended)")
            #expect(ended[servers[0].id]?.contains("the read of a large message") == true, "bad key: \(ended[servers[0].id] ?? "not ended")")
            #expect(ended[servers[1].id]?.contains("larger than the") == true, "bad length: \(ended[servers[1].id] ?? "not ended")")
            #expect(ended[servers[2].id] == nil)

            // The honest client's large messages still go through.
            let (received, sent) = try RxeIntegration.LargeMessages.exchange(
                [2 << 20, 10, 3 << 20], from: honest.0, area: honest.1, to: servers[2], receiverArea: serverArea)
            #expect(received == 3 && sent.count == 3)
        }

        /// Dones for large messages the peer was never lent break the protocol: a client that
        /// reports three reads done before it was sent anything ends its connection (later calls
        /// on it say `disconnected`, and why: a protocol error); another connection on the same
        /// channel goes on.
        @Test func donesOfMessagesNeverLentEndOnlyThatConnection() throws {
            let pair = try ConnectedPair(areaSize: 16 << 20, receiveBytes: 32 << 10, slotSize: 4096)
            let (otherEvents, otherArea) = (try EventChannel(), try DMAArea(size: 16 << 20))
            let other = try ConnectedPair.connect(client: (otherEvents, otherArea), server: (pair.serverEvents, pair.serverArea),
                                                  receiveBytes: 32 << 10, slotSize: 4096)
            defer {
                other.client.close()
                other.server.close()
            }
            let queuePair = try #require(pair.client.queuePair)
            try queuePair.postSend(
                ScatterGatherElement(address: 0, length: 0, localKey: 0), requestID: Self.strayRequest,
                operation: .sendWithImmediate(WireProtocol.immediate(returning: 0, dones: 3, creditUpdate: true)))
            var ended: RDMAError?
            let deadline = ContinuousClock.now + .seconds(10)
            while ended == nil, ContinuousClock.now < deadline {
                guard let event = try pair.serverEvents.wait(timeout: .milliseconds(200)) else { continue }
                if case .disconnected(let id) = event {
                    #expect(id == pair.server.id, "only the hostile client's connection ends")
                    do { _ = try pair.server.receive() } catch { ended = error }
                }
            }
            let error = try #require(ended, "the server's connection to the hostile client did not end")
            #expect(error.code == .disconnected)
            #expect(error.message.contains("reported more large messages read than it was lent: protocol error"), "\(error.message)")
            // The other client's large message still goes through on the same server channel.
            let (received, sent) = try RxeIntegration.LargeMessages.exchange(
                [1 << 20], from: other.client, area: otherArea, to: other.server, receiverArea: pair.serverArea)
            #expect(received == 1 && sent.count == 1)
        }

        /// Once a large message was reported sent, the key it was lent under reads nothing: a
        /// read with it, from the receiving side's queue pair, fails (remote access error) and
        /// ends that connection.
        @Test func theKeyOfASentMessageReadsNothing() throws {
            let pair = try ConnectedPair(areaSize: 16 << 20, receiveBytes: 32 << 10, slotSize: 4096)
            let (received, sent) = try RxeIntegration.LargeMessages.exchange(
                [1 << 20], from: pair.client, area: pair.clientArea, to: pair.server, receiverArea: pair.serverArea)
            try #require(received == 1 && sent.count == 1)
            // The key and the buffer of that send, from the sender's state.
            let clientID = pair.client.id.rawValue
            let (key, address) = try #require(pair.clientEvents.state.withLock { state -> (UInt32, UInt64)? in
                guard let core = state.connections.core(clientID), let window = core.pointee.windows.first,
                      let address = core.pointee.lastPostedSendAddress else { return nil }
                return (window.currentKey, UInt64(UInt(bitPattern: address)))
            })
            // A read with it, posted as the server's own read of a large message.
            let queuePair = try #require(pair.server.queuePair)
            let block = try pair.serverArea.allocate(1 << 20, for: "test")
            let readRequest = ConnectionCore.RequestKind.creditUpdate.rawValue << 62 | UInt64(pair.server.id.rawValue) << 32
                | UInt64(UInt32(ConnectionCore.readSlot))
            try queuePair.postRead(into: pair.serverArea.segment(at: block, count: 1 << 20), remoteAddress: address, remoteKey: key,
                                   requestID: readRequest)
            var reason: String?
            let deadline = ContinuousClock.now + .seconds(10)
            while reason == nil, ContinuousClock.now < deadline {
                guard let event = try pair.serverEvents.wait(timeout: .milliseconds(200)) else { continue }
                if case .disconnected = event {
                    do { _ = try pair.server.receive() } catch { reason = error.message }
                }
            }
            #expect(reason?.contains("remote access error") == true, "the read with the sent message's key: \(reason ?? "did not fail")")
            pair.serverArea.free(block)
        }
    }
}
