@testable import DMAIO
import Foundation
import RDMAVerbs
import Testing

/// Messages larger than the peer's receive slot, by rendezvous (docs/large-messages.md): the
/// receiver reads them from the sender's buffer into its own area, in order with the others.
extension RxeIntegration {
    @Suite struct LargeMessages {
        init() throws { try RxeEnvironment.requireRxeDevice() }

        /// Byte `index` of message `sequence`.
        static func byte(_ index: Int, of sequence: Int) -> UInt8 {
            UInt8(truncatingIfNeeded: index &* 131 &+ index >> 9 &+ sequence &* 71)
        }

        static func fill(_ buffer: UnsafeMutableRawBufferPointer, sequence: Int) {
            for index in 0..<buffer.count { buffer[index] = byte(index, of: sequence) }
        }

        /// The first index where `bytes` differ from message `sequence`, or nil.
        static func firstDifference(_ bytes: UnsafeRawBufferPointer, sequence: Int) -> Int? {
            for index in 0..<bytes.count where bytes[index] != byte(index, of: sequence) { return index }
            return nil
        }

        /// Sends `sizes` from `sender` (all queued at once), receives them on `receiver` while
        /// taking the sender's events on the same thread, checks order, length and every byte,
        /// and that each send was reported `.sent` once.
        static func exchange(_ sizes: [Int], from sender: Connection, area: DMAArea, to receiver: Connection,
                             receiverArea: DMAArea? = nil) throws -> (received: Int, sent: Set<UInt64>) {
            var next = 0
            var received = 0
            var sent = Set<UInt64>()
            let deadline = ContinuousClock.now + .seconds(60)
            while received < sizes.count || sent.count < sizes.count {
                try #require(ContinuousClock.now < deadline, "after 60 s: \(received) of \(sizes.count) received, \(sent.count) reported sent")
                // Queue the next send when the area has room for it.
                if next < sizes.count, let buffer = try? area.reserve(sizes[next]) {
                    buffer.withUnsafeMutableBytes { fill($0, sequence: next) }
                    try sender.send(buffer, cookie: UInt64(next))
                    next += 1
                }
                while let event = try sender.events.next() {
                    switch event {
                    case .sent(_, let cookie):
                        #expect(sent.insert(cookie).inserted, "send \(cookie) reported twice")
                    case .sendFailed(_, let cookie, let status):
                        Issue.record("send \(cookie) failed: \(status)")
                        return (received, sent)
                    default: break
                    }
                }
                while let event = try receiver.events.next() {
                    if case .disconnected = event { Issue.record("the receiver's connection ended"); return (received, sent) }
                }
                if let message = try receiver.receive() {
                    let sequence = received
                    // Zero copy: the message lies in the receiver's area, where the device put it.
                    let inArea = message.withUnsafeBytes { bytes in
                        receiverArea.map { $0.contains(bytes.baseAddress!, count: bytes.count) } ?? true
                    }
                    #expect(inArea, "message \(sequence) is not inside the receiver's area")
                    #expect(message.count == sizes[sequence], "message \(sequence): \(message.count) bytes, not \(sizes[sequence]) (out of order?)")
                    if message.count == sizes[sequence] {
                        let difference = message.withUnsafeBytes { firstDifference($0, sequence: sequence) }
                        #expect(difference == nil, "message \(sequence) (\(sizes[sequence]) bytes) differs at byte \(difference ?? -1)")
                    }
                    received += 1
                    message.release()
                }
            }
            return (received, sent)
        }

        /// 10 MiB, 3 MiB, 1 MiB + 3 and 200,000-byte messages between eager ones of 1 B to one
        /// slot: each arrives whole, in the order sent, and each send is reported once.
        @Test(arguments: [ConnectedPair.Transport.connectionManager, .tcpSocket])
        func messagesOfAnySizeArriveWholeAndInOrder(transport: ConnectedPair.Transport) throws {
            let pair = try ConnectedPair(areaSize: 64 << 20, receiveBytes: 64 << 10, slotSize: 4096, transport: transport)
            #expect(pair.client.peerSlotSize == 4096)
            #expect(pair.client.peerLargestMessage == 32 << 20)
            let sizes = [10 << 20, 64, 200_000, 4096, 4097, (1 << 20) + 3, 1, 3 << 20, 100]
            let rounds = sizes + sizes + sizes
            let (received, sent) = try Self.exchange(rounds, from: pair.client, area: pair.clientArea, to: pair.server, receiverArea: pair.serverArea)
            #expect(received == rounds.count)
            #expect(sent == Set((0..<rounds.count).map(UInt64.init)))
            // And back: the server sends large messages too.
            let (back, backSent) = try Self.exchange([5 << 20, 7, 5 << 20], from: pair.server, area: pair.serverArea, to: pair.client)
            #expect(back == 3 && backSent.count == 3)
        }

        /// A receiver whose area holds one large message at a time (a 2 MiB area: its slots in one
        /// half, one 1 MiB block in the other): each read waits until the message before it was
        /// released, the sender is throttled, nothing fails.
        /// A message larger than one read may carry (the port's `max_msg_sz`: 2 GiB on rxe) is
        /// read in pieces. The receiver's piece is set to 64 KiB here, so that messages of a
        /// few MiB take up to 48 reads each, and one of exactly one piece and one piece + 1 are
        /// among them; every byte and the order are checked, with small messages between.
        @Test func aMessageLargerThanOneReadIsReadInPieces() throws {
            let pair = try ConnectedPair(areaSize: 32 << 20, receiveBytes: 32 << 10, slotSize: 4096)
            let serverID = pair.server.id.rawValue
            let reported = try #require(pair.serverEvents.state.withLock { state -> Int? in
                guard let core = state.connections.core(serverID) else { return nil }
                let reported = core.pointee.readPiece
                core.pointee.readPiece = 64 << 10
                return reported
            })
            #expect(reported == min(try pair.serverArea.context.port().maxMessageSize, ConnectionCore.readPieceLimit))
            let sizes = [3 << 20, 10, 64 << 10, (64 << 10) + 1, 200_000, (1 << 20) + 3, 4097, 3 << 20]
            let (received, sent) = try Self.exchange(sizes + sizes, from: pair.client, area: pair.clientArea, to: pair.server,
                                                     receiverArea: pair.serverArea)
            #expect(received == 2 * sizes.count)
            #expect(sent.count == 2 * sizes.count)
        }

        /// A large message is read in pieces small enough that soft-RoCE loses none of the
        /// read's response: read whole, every 16 MiB message cost rxe 16 retransmissions after
        /// an ACK timeout (268 ms each: 3 MB/s, and a connection that ran out of retries on a
        /// busy machine); in 32 KiB pieces, none. Counted by rxe itself
        /// (`hw_counters/completer_retry_err` of every device; a stray one is tolerated), between
        /// two devices (rxe0 and rxe1): within one device rxe loops packets back and loses none.
        @Test func largeReadsCostRxeNoRetransmission() throws {
            func retries() -> Int { RxeEnvironment.counter("completer_retry_err") }
            let serverArea = try DMAArea(size: 64 << 20, device: RxeEnvironment.deviceName)
            let clientArea = try DMAArea(size: 64 << 20, device: RxeEnvironment.peerDeviceName)
            let (client, server) = try ConnectedPair.connect(
                client: (try EventChannel(device: RxeEnvironment.peerDeviceName), clientArea),
                server: (try EventChannel(device: RxeEnvironment.deviceName), serverArea),
                receiveBytes: 32 << 10, slotSize: 4096, from: RxeEnvironment.peerAddress)
            defer {
                client.close()
                server.close()
            }
            let before = retries()
            let sizes = [16 << 20, 1 << 20, 16 << 20, 1 << 20]
            let (received, sent) = try Self.exchange(sizes, from: client, area: clientArea, to: server, receiverArea: serverArea)
            #expect(received == sizes.count && sent.count == sizes.count)
            let retransmissions = retries() - before
            print("rxe retransmissions over 34 MiB of large messages: \(retransmissions)")
            #expect(retransmissions <= 2, "\(retransmissions) ACK timeouts while reading 34 MiB (read whole: 34)")
        }

        @Test func aFullReceiverThrottlesTheSenderAndLosesNothing() throws {
            let pair = try ConnectedPair(areaSize: 16 << 20, serverAreaSize: 2 << 20, receiveBytes: 16 << 10, slotSize: 4096)
            let (client, server, clientArea) = (pair.client, pair.server, pair.clientArea)
            #expect(client.peerLargestMessage == 1 << 20)
            let sizes = [1 << 20, 900_000, 1 << 20, 700_000, 64, 1 << 20, 600_000]
            let (received, sent) = try Self.exchange(sizes, from: client, area: clientArea, to: server)
            #expect(received == sizes.count)
            #expect(sent.count == sizes.count)
        }

        /// A receiver that holds every large message it gets (no release) takes as many as its
        /// budget allows (half its 8 MiB area: four of 1 MiB), and no more arrive while it holds
        /// them — the sender is throttled, nothing fails; releasing lets the rest through.
        @Test func aReceiverHoldingEverythingThrottlesTheSenderUntilItReleases() throws {
            let pair = try ConnectedPair(areaSize: 16 << 20, serverAreaSize: 8 << 20, receiveBytes: 16 << 10, slotSize: 4096)
            let (client, server, clientArea, serverArea) = (pair.client, pair.server, pair.clientArea, pair.serverArea)
            let (clientEvents, serverEvents) = (pair.clientEvents, pair.serverEvents)
            #expect(client.peerLargestMessage == 4 << 20)
            let count = 6, size = 1 << 20
            for sequence in 0..<count {
                let buffer = try clientArea.reserve(size)
                buffer.withUnsafeMutableBytes { Self.fill($0, sequence: sequence) }
                try client.send(buffer, cookie: UInt64(sequence))
            }
            var received = 0, sent = 0
            /// Takes events and messages (held: receiveRetained) until `until` or the deadline.
            func pump(until done: () -> Bool, for duration: Duration) throws {
                let deadline = ContinuousClock.now + duration
                while !done(), ContinuousClock.now < deadline {
                    while let event = try clientEvents.next() {
                        if case .sent = event { sent += 1 }
                        if case .sendFailed(_, let cookie, let status) = event { Issue.record("send \(cookie) failed: \(status)") }
                    }
                    _ = try serverEvents.next()
                    if let bytes = try server.receiveRetained() {
                        #expect(bytes.count == size)
                        #expect(Self.firstDifference(bytes, sequence: received) == nil, "message \(received) differs")
                        received += 1
                    }
                }
            }
            try pump(until: { received == 4 && sent == 4 }, for: .seconds(30))
            #expect(received == 4 && sent == 4, "held: \(received) received, \(sent) reported sent")
            // Holding them, nothing more comes.
            try pump(until: { false }, for: .seconds(1))
            #expect(received == 4, "\(received) received while four were held")
            try serverArea.releaseOldest(bytes: 4 * size)
            try pump(until: { received == count && sent == count }, for: .seconds(30))
            #expect(received == count && sent == count, "after the release: \(received) received, \(sent) reported sent")
            try serverArea.releaseOldest(bytes: (count - 4) * size)
        }

        /// A connection receiving through a shared pool of slots reads large messages into the
        /// pool's area the same way; `largeMessageBytes` bounds them.
        @Test func aSharedPoolTakesLargeMessagesToo() throws {
            let serverEvents = try EventChannel()
            let serverArea = try DMAArea(size: 16 << 20)
            let pool = try SharedReceivePool(area: serverArea, receiveBytes: 32 * 4096, slotSize: 4096)
            let clientArea = try DMAArea(size: 16 << 20)
            let (client, server) = try ConnectedPair.connect(
                client: (try EventChannel(), clientArea), toPool: pool, serverEvents: serverEvents, credits: 8, largeMessageBytes: 4 << 20)
            defer { client.close(); server.close() }
            #expect(client.peerLargestMessage == 4 << 20)
            let sizes = [4 << 20, 10, 3 << 20, 4097, 4096, 1 << 20]
            let (received, sent) = try Self.exchange(sizes, from: client, area: clientArea, to: server)
            #expect(received == sizes.count && sent.count == sizes.count)
            #expect(pool.unclaimedSlots == 32 - 16, "the pool's slots are back but for the connection's claim")
        }

        /// A message larger than the peer accepts is refused before anything is sent, with both
        /// sizes in the error; the connection goes on.
        @Test func aMessageLargerThanThePeerAcceptsIsRefusedAtTheSender() throws {
            let pair = try ConnectedPair(areaSize: 16 << 20, serverAreaSize: 2 << 20, receiveBytes: 16 << 10, slotSize: 4096)
            let (client, server, clientArea) = (pair.client, pair.server, pair.clientArea)
            var refusal: RDMAError?
            do {
                try client.send(try clientArea.reserve((1 << 20) + 1), cookie: 1)
            } catch {
                refusal = error
            }
            #expect(refusal?.code == .messageTooLarge, "\(String(describing: refusal))")
            #expect(refusal?.message.contains("1048577 bytes") == true && refusal?.message.contains("1048576 bytes") == true,
                    "the error names both sizes: \(refusal?.message ?? "none")")
            let (received, sent) = try Self.exchange([1 << 20], from: client, area: clientArea, to: server)
            #expect(received == 1 && sent.count == 1)
        }
    }
}
