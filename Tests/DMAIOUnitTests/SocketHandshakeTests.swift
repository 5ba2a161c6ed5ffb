import RDMAVerbs
import Testing
@testable import DMAIO
import ExampleSupport

/// The TCP-upgrade handshake parser takes bytes from whoever is on the other end of a socket:
/// every input must give a valid hello or a clear `connectionFailed` error, never a crash.
@Suite struct SocketHandshakeTests {
    static let valid = SocketHandshake.Hello(
        mtu: 3, endpoint: QueuePairEndpoint(queuePairNumber: 0, packetSequenceNumber: 0x12_3456, gid: GID(ipv4MappedFrom: IPv4Address("10.99.0.2")!)),
        credits: 8, slotSize: 4096, largestMessage: 1 << 20)

    @Test func helloRoundTrips() throws {
        #expect(Self.valid.bytes.count == SocketHandshake.helloSize)
        #expect(try SocketHandshake.Hello(parsing: Self.valid.bytes) == Self.valid)
        // The largest message's high half sits at offset 8: 5 GiB goes through.
        var large = Self.valid
        large.largestMessage = 5 << 30
        #expect(try SocketHandshake.Hello(parsing: large.bytes) == large)
    }

    @Test(arguments: [
        (0, "magic"), (4, "version"), (6, "MTU"), (8, "largest message (high 32 bits)"), (7, "reserved"), (12, "PSN"), (36, "credits"), (40, "slot size"),
    ])
    func eachCheckedFieldIsRefused(offset: Int, field: String) {
        var bytes = Self.valid.bytes
        bytes[offset] ^= 0xFF
        #expect(throws: RDMAError.self, "a corrupted \(field) was accepted") { try SocketHandshake.Hello(parsing: bytes) }
    }

    @Test func aLargestMessageBelowTheSlotSizeIsRefused() {
        var bytes = Self.valid.bytes
        bytes.replaceSubrange(44..<48, with: [0, 0, 0x0F, 0xFF])  // 4095, below 4 KiB slots
        #expect(throws: RDMAError.self) { try SocketHandshake.Hello(parsing: bytes) }
    }

    /// The second exchange: a 24-bit queue pair number that is not 0, and the credits the peer
    /// takes, 1 to this side's grant (8 here).
    @Test func queuePairNumbersAre24BitsAndTheCreditsTakenAtMostTheGrant() throws {
        let numbers = SocketHandshake.QueuePairNumbers(queuePairNumber: 0x11, creditsTaken: 8)
        #expect(numbers.bytes == [0, 0, 0, 0x11, 0, 0, 0, 8])
        #expect(try SocketHandshake.QueuePairNumbers(parsing: numbers.bytes, granted: 8) == numbers)
        let bad: [([UInt8], String)] = [
            ([0, 0, 0, 0, 0, 0, 0, 1], "queue pair number 0"), ([1, 0, 0, 0, 0, 0, 0, 1], "queue pair number 16777216"),
            ([0, 0, 0, 1, 0, 0, 0, 0], "takes 0 credits"), ([0, 0, 0, 1, 0, 0, 0, 9], "takes 9 credits of the 8"),
            ([0, 0, 0, 1], "4 bytes"), ([], "0 bytes"), ([0, 0, 0, 1, 0, 0, 0, 1, 0], "9 bytes"),
        ]
        for (bytes, reason) in bad {
            #expect {
                try SocketHandshake.QueuePairNumbers(parsing: bytes, granted: 8)
            } throws: { error in
                let error = error as? RDMAError
                return error?.errno == .protocolError && error?.message.contains(reason) == true
            }
        }
    }

    /// The resume after a queue pair failed: 32 bytes as documented, and every field checked —
    /// the magic, the version, the reserved bytes, credits at most what this side took (8 here),
    /// a 24-bit queue pair number that is not 0, a 24-bit PSN.
    @Test func resumeMessagesAreLaidOutAsDocumentedAndChecked() throws {
        let resume = SocketHandshake.Resume(messagesReceived: 0x1_0000_0002, credits: 8, queuePairNumber: 0x11, packetSequenceNumber: 0xABCDEF)
        #expect(resume.bytes == [0x44, 0x4D, 0x41, 0x52, 0, 5, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 8, 0, 0, 0, 0x11, 0, 0xAB, 0xCD, 0xEF, 0, 0, 0, 0])
        #expect(resume.bytes[0] == SocketHandshake.Resume.firstByte)
        #expect(try SocketHandshake.Resume(parsing: resume.bytes, creditLimit: 8) == resume)
        func changed(_ offset: Int, _ value: UInt8) -> [UInt8] {
            var bytes = resume.bytes
            bytes[offset] = value
            return bytes
        }
        let bad: [([UInt8], String)] = [
            (changed(0, 0x45), "does not start with \"DMAR\""), (changed(5, 4), "is version 4"), (changed(6, 1), "reserved"),
            (changed(31, 1), "reserved"), (changed(19, 9), "hands out 9 credits"), (changed(23, 0), "names queue pair 0"),
            (changed(20, 1), "names queue pair 16777233"), (changed(24, 1), "not a 24-bit number"), (Array(resume.bytes.prefix(31)), "31 bytes"),
        ]
        for (bytes, reason) in bad {
            #expect {
                try SocketHandshake.Resume(parsing: bytes, creditLimit: 8)
            } throws: { error in
                let error = error as? RDMAError
                return error?.errno == .protocolError && error?.message.contains(reason) == true
            }
        }
    }

    /// Property-based fuzzing: 200,000 inputs — random bytes of random lengths, valid hellos
    /// with random bytes flipped, truncated and extended ones — each parsed. Anything accepted
    /// must satisfy every invariant the queue-pair setup relies on; anything refused must be
    /// `connectionFailed` with EPROTO and a message.
    @Test func fuzzedHellosAreAcceptedOnlyWhenValid() {
        var generator = SplitMix64(seed: 0x5EED_D1A0)
        var accepted = 0, refused = 0
        let inputs = 200_000
        for round in 0..<inputs {
            var bytes: [UInt8]
            switch round % 4 {
            case 0:
                bytes = (0..<Int(generator.next() % 80)).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
            case 1:
                bytes = Self.valid.bytes
                for _ in 0..<(1 + Int(generator.next() % 4)) {
                    bytes[Int(generator.next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: generator.next())
                }
            case 2:
                bytes = Array(Self.valid.bytes.prefix(Int(generator.next() % 48)))
            default:
                bytes = Self.valid.bytes + (0..<(1 + Int(generator.next() % 16))).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
            }
            do {
                let hello = try SocketHandshake.Hello(parsing: bytes)
                accepted += 1
                #expect(bytes.count == SocketHandshake.helloSize)
                #expect((1...5).contains(hello.mtu))
                #expect(hello.credits >= 1 && hello.credits <= WireProtocol.creditMask)
                #expect(hello.slotSize >= 64 && hello.slotSize <= 1 << 30 && hello.slotSize.nonzeroBitCount == 1)
                #expect(hello.largestMessage >= hello.slotSize && hello.largestMessage <= UInt64(WireProtocol.largestMessageLimit))
                #expect(hello.endpoint.packetSequenceNumber <= 0xFF_FFFF)
                #expect(hello.bytes == bytes, "an accepted hello does not re-encode to its input")
            } catch {
                refused += 1
                #expect(error.code == .connectionFailed && error.errno == .protocolError && !error.message.isEmpty)
            }
        }
        print("socket handshake fuzz: \(inputs) inputs, \(accepted) accepted, \(refused) refused")
        #expect(accepted + refused == inputs)
        #expect(accepted > 0 && refused > 0)
    }
}
