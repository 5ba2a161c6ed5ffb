@testable import DMAIO
import Foundation
import RDMAVerbs
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// How many of the peer's credits a side takes (``Connection/associate(_:receiveBytes:slotSize:largeMessageBytes:sendCredits:timeout:)``):
/// by default no more than it grants, so both directions use the smaller grant; `sendCredits`
/// asks for more, bounded by the peer's grant. Over rdma_cm and over a TCP socket.
extension RxeIntegration {
    @Suite struct CreditGrants {
        init() throws { try RxeEnvironment.requireRxeDevice() }

        /// A client granting 2 credits and a server granting 8, associated over `transport`,
        /// the client taking `sendCredits` of the server's.
        static func connect(_ transport: ConnectedPair.Transport, clientSendCredits: Int?) throws
            -> (client: Connection, server: Connection, clientArea: DMAArea, serverArea: DMAArea, sockets: (Int32, Int32)?) {
            let (clientEvents, serverEvents) = (try EventChannel(), try EventChannel())
            let (clientArea, serverArea) = (try DMAArea(size: 4 << 20), try DMAArea(size: 4 << 20))
            switch transport {
            case .connectionManager:
                let address = "\(RxeEnvironment.address):\(RxeEnvironment.freshPort())"
                let listener = try Listener(on: address, events: serverEvents)
                let accepted = OnThread { () throws -> Connection in
                    let connection = try listener.accept(timeout: .seconds(10))
                    try connection.associate(serverArea, receiveBytes: 8 * 4096, slotSize: 4096)
                    return connection
                }
                let client = try Connection(to: address, events: clientEvents)
                try client.associate(clientArea, receiveBytes: 2 * 4096, slotSize: 4096, sendCredits: clientSendCredits)
                return (client, try accepted.join(), clientArea, serverArea, nil)
            case .tcpSocket:
                let sockets = try TCPSockets.pair()
                let upgraded = OnThread { () throws -> Connection in
                    let connection = try Connection(socket: sockets.server, events: serverEvents)
                    try connection.associate(serverArea, receiveBytes: 8 * 4096, slotSize: 4096)
                    return connection
                }
                let client = try Connection(socket: sockets.client, events: clientEvents)
                try client.associate(clientArea, receiveBytes: 2 * 4096, slotSize: 4096, sendCredits: clientSendCredits)
                return (client, try upgraded.join(), clientArea, serverArea, sockets)
            }
        }

        /// The client sends 8 messages that the server holds without releasing any: as many
        /// arrive as the credits the client took — 2 by default (its own grant), 8 with
        /// `sendCredits: 8` or more (the server's whole grant) — and the server, granting 8 and
        /// granted 2, takes 2 either way.
        @Test(arguments: [ConnectedPair.Transport.connectionManager, .tcpSocket], [(nil, 2), (8, 8), (100, 8)] as [(Int?, Int)])
        func aSideTakesItsOwnGrantUnlessToldOtherwise(transport: ConnectedPair.Transport, asked: (sendCredits: Int?, taken: Int)) throws {
            let pair = try Self.connect(transport, clientSendCredits: asked.sendCredits)
            defer {
                pair.client.close()
                pair.server.close()
                if let sockets = pair.sockets {
                    close(sockets.0)
                    close(sockets.1)
                }
            }
            #expect(pair.client.sendCounters.credits == asked.taken)
            #expect(pair.server.sendCounters.credits == 2)
            for sequence in 0..<8 {
                let buffer = try pair.clientArea.reserve(100)
                buffer.withUnsafeMutableBytes { StreamMessage.fill($0, sequence: sequence) }
                try pair.client.send(buffer, cookie: UInt64(sequence))
            }
            // Messages not taken keep their slots: count their announcements, then take them.
            var arrived = 0
            let deadline = ContinuousClock.now + .seconds(2)
            while ContinuousClock.now < deadline {
                if case .received = try pair.server.events.wait(timeout: .milliseconds(50)) { arrived += 1 }
            }
            #expect(arrived == asked.taken, "\(arrived) messages arrived while the server held them all")
            var taken = 0
            while taken < 8, ContinuousClock.now < deadline + .seconds(10) {
                // The client takes the credits that come back (and sends what waited for them)
                // when it calls in.
                while try pair.client.events.next() != nil {}
                guard let message = try pair.server.receive() else { _ = try pair.server.events.wait(timeout: .milliseconds(20)); continue }
                let intact = StreamMessage.matches(message, sequence: taken)
                #expect(intact, "message \(taken) differs")
                taken += 1
                message.release()
            }
            #expect(taken == 8)
        }

        @Test func sendCreditsOutOfRangeAreRefused() throws {
            let events = try EventChannel()
            let area = try DMAArea(size: 1 << 20)
            for credits in [0, -1, 1 << 24] {
                let connection = try Connection(to: "\(RxeEnvironment.address):\(RxeEnvironment.freshPort())", events: events)
                #expect {
                    try connection.associate(area, receiveBytes: 4096, slotSize: 4096, sendCredits: credits)
                } throws: { error in
                    let error = error as? RDMAError
                    return error?.code == .invalidArgument && error?.message.contains("sendCredits \(credits)") == true
                }
                connection.close()
            }
        }
    }
}
