import CRDMA
@testable import DMAIO
import Foundation
import RDMAVerbs
import Testing

extension RxeIntegration {
    /// What the library allows a remote peer by default, read back from the device: sends, and
    /// reads of one buffer through a window bound for a large message while it is sent. No
    /// memory region is open to RDMA read, write or atomics itself, and a listener answers only
    /// on the address it was given.
    @Suite struct SecurityDefaults {
        init() throws { try RxeEnvironment.requireRxeDevice() }

        static var peerAddress: String { ProcessInfo.processInfo.environment["RXE_PEER_ADDR"] ?? "10.99.0.2" }

        @Test(arguments: [ConnectedPair.Transport.connectionManager, .tcpSocket])
        func noRemoteAccessToAreasOrQueuePairs(transport: ConnectedPair.Transport) throws {
            let pair = try ConnectedPair(transport: transport)
            for area in [pair.clientArea, pair.serverArea] {
                // Local write, and windows may be bound (a large message's sender lends one buffer).
                #expect(area.region.access == [.localWrite, .memoryWindowBind], "an area is registered with \(area.region.access.rawValue) (IBV_ACCESS_* bits)")
                #expect(!area.region.access.grantsRemoteAccess)
            }
            for connection in [pair.client, pair.server] {
                // ibv_query_qp: what the device lets a remote peer do to this queue pair.
                let attributes = try #require(try connection.queuePairAttributes())
                #expect(attributes.state == IBV_QPS_RTS)
                // Remote write for the zero-length keepalive writes, remote read for the windows
                // of large messages (the region grants neither itself); no atomics.
                #expect(attributes.access == [.remoteWrite, .remoteRead], "the queue pair grants remote access \(attributes.access.rawValue) (IBV_ACCESS_* bits)")
                // The documented dead-peer limit: ACK timeout 2^16 × 4.096 µs, 6 retries.
                #expect(attributes.ackTimeout == PeerTimeout.ackTimeout)
                #expect(attributes.retryCount == PeerTimeout.retryCount)
                let limit = try #require(attributes.silentPeerLimit as Duration?)
                #expect(limit > .seconds(1) && limit < .seconds(3), "a silent peer is declared dead after \(limit)")
            }
            // The connection still carries data with remote access taken back.
            let buffer = try pair.clientArea.reserve(64)
            buffer.withUnsafeMutableBytes { StreamMessage.fill($0, sequence: 64) }
            try pair.client.send(buffer, cookie: 0)
            guard let message = try Self.receive(on: pair) else {
                Issue.record("the message did not arrive within 10 s")
                return
            }
            let intact = StreamMessage.matches(message, sequence: 64)
            #expect(intact)
            message.release()
        }

        /// A listener on 10.99.0.1 does not answer a connection to another address of the same
        /// host (10.99.0.2, the second rxe device): it was not bound to the wildcard address.
        @Test func listenerAnswersOnlyOnItsAddress() throws {
            let events = try EventChannel()
            let port = RxeEnvironment.freshPort()
            let listener = try Listener(on: "\(RxeEnvironment.address):\(port)", events: events)
            let bound = try #require(listener.address)
            #expect(bound.description == "\(RxeEnvironment.address):\(port)", "the listener is bound to \(bound)")

            let clientEvents = try EventChannel(device: ProcessInfo.processInfo.environment["RXE_PEER_DEVICE"] ?? "rxe1")
            let clientArea = try DMAArea(size: 1 << 20, device: clientEvents.deviceName)
            let serverArea = try DMAArea(size: 1 << 20)
            // The listener accepts meanwhile: a listener on the wildcard address would take the
            // request and let the client associate.
            let strayAccept = OnThread { () throws -> Bool in
                do throws(RDMAError) {
                    let connection = try listener.accept(timeout: .seconds(7))
                    try connection.associate(serverArea, receiveBytes: 64 << 10, slotSize: 4096)
                    connection.close()
                    return true
                } catch {
                    if error.code == .timedOut { return false }
                    throw error
                }
            }
            let started = ContinuousClock.now
            #expect {
                // Connection(to:) resolves the address; associate sends the connect request.
                let client = try Connection(to: "\(Self.peerAddress):\(port)", from: Self.peerAddress, events: clientEvents, timeout: .seconds(5))
                defer { client.close() }
                try client.associate(clientArea, receiveBytes: 64 << 10, slotSize: 4096, timeout: .seconds(5))
            } throws: { error in
                guard let error = error as? RDMAError else { return false }
                return error.code == .connectionFailed || error.code == .timedOut
            }
            #expect(ContinuousClock.now - started < .seconds(8), "the refusal took \(ContinuousClock.now - started)")
            #expect(try strayAccept.join() == false, "the listener accepted a connection made to \(Self.peerAddress)")

            // The listener itself works: the same client reaches it on its own address.
            let accepted = OnThread { () throws -> Connection in
                let connection = try listener.accept(timeout: .seconds(10))
                try connection.associate(serverArea, receiveBytes: 64 << 10, slotSize: 4096)
                return connection
            }
            let client = try Connection(to: "\(RxeEnvironment.address):\(port)", from: Self.peerAddress, events: clientEvents)
            try client.associate(clientArea, receiveBytes: 64 << 10, slotSize: 4096)
            let server = try accepted.join()
            #expect(client.isConnected && server.isConnected)
            server.close()
            client.close()
        }

        static func receive(on pair: ConnectedPair) throws -> ReceivedBuffer? {
            let deadline = ContinuousClock.now + .seconds(10)
            while ContinuousClock.now < deadline {
                if let message = try pair.server.receive() { return message }
                _ = try pair.serverEvents.wait(timeout: .seconds(1))
            }
            return nil
        }
    }
}
