import Testing
@testable import DMAIO
import RDMAVerbs

@Suite struct WireProtocolTests {
    /// A hello whose last (reserved) byte is 1.
    static let reservedNotZero: [UInt8] = {
        var bytes = WireProtocol.Hello(credits: 1, room: 1, slotSize: 64, largestMessage: 64).bytes
        bytes[35] = 1
        return bytes
    }()
    /// A version 4 peer's hello ("DMA4", 24 bytes, padded by rdma_cm).
    static let versionFour: [UInt8] = [0x44, 0x4D, 0x41, 0x34, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0x10, 0]
        + [UInt8](repeating: 0, count: 32)

    @Test func helloRoundTripsThroughPaddedPrivateData() throws {
        let hello = WireProtocol.Hello(credits: 32, room: 16, slotSize: 65536, largestMessage: 1 << 24)
        #expect(hello.bytes.count == WireProtocol.helloSize)
        let padded = hello.bytes + Array(repeating: 0, count: 40)  // rdma_cm pads private data
        #expect(try WireProtocol.Hello(parsing: padded) == hello)
        // The largest message is 64-bit: 5 GiB and the 1 TiB limit go through.
        for largest: UInt64 in [5 << 30, 1 << 40] {
            let large = WireProtocol.Hello(credits: 1, room: 1, slotSize: 4096, largestMessage: largest)
            #expect(try WireProtocol.Hello(parsing: large.bytes) == large)
        }
        // A server's resume token and port (a client sends 0 for both).
        var server = hello
        server.resumeToken = 0x0123_4567_89AB_CDEF
        server.resumePort = 0xC0DE
        #expect(Array(server.bytes[24...]) == [0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF, 0xC0, 0xDE, 0, 0])
        #expect(try WireProtocol.Hello(parsing: server.bytes + [0, 0, 0, 0]) == server)
        #expect(hello.resumeToken == 0 && hello.resumePort == 0)
    }

    /// A resume over rdma_cm: 28 bytes as documented; anything else is not one.
    @Test func resumeRequestRoundTripsAndOnlyAResumeParses() {
        let request = WireProtocol.ResumeRequest(token: 0x0102_0304_0506_0708, messagesReceived: 0x1_0000_0005, credits: 16)
        #expect(request.bytes == [0x44, 0x4D, 0x41, 0x55, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0, 16])
        #expect(WireProtocol.ResumeRequest(parsing: request.bytes + Array(repeating: 0, count: 28)) == request)
        #expect(WireProtocol.ResumeRequest(parsing: Array(request.bytes.prefix(27))) == nil)
        var reserved = request.bytes
        reserved[7] = 1
        #expect(WireProtocol.ResumeRequest(parsing: reserved) == nil)
        #expect(WireProtocol.ResumeRequest(parsing: WireProtocol.Refusal(errno: 2).bytes + [UInt8](repeating: 0, count: 48)) == nil)
        #expect(WireProtocol.ResumeRequest(parsing: WireProtocol.Hello(credits: 1, room: 1, slotSize: 64, largestMessage: 64).bytes) == nil)
    }

    @Test(arguments: [
        ([UInt8](), "not a DMAIO hello"),
        (WireProtocol.Hello(credits: 1, room: 0, slotSize: 64, largestMessage: 64).bytes, "not usable"),
        ([UInt8](repeating: 0, count: 36), "does not start with the DMAIO magic"),
        ([UInt8](repeating: 0, count: 24), "not a DMAIO hello"),
        (WireProtocolTests.reservedNotZero, "reserved bytes that are not 0"),
        (WireProtocolTests.versionFour, "does not start with the DMAIO magic (wrong protocol or version)"),
        (WireProtocol.Hello(credits: 0, room: 1, slotSize: 64, largestMessage: 64).bytes, "not usable"),
        (WireProtocol.Hello(credits: 1 << 25, room: 1, slotSize: 64, largestMessage: 64).bytes, "not usable"),
        (WireProtocol.Hello(credits: 1, room: 1, slotSize: 4096, largestMessage: 64).bytes, "not usable"),
        (WireProtocol.Hello(credits: 1, room: 1, slotSize: 64, largestMessage: (1 << 40) + 1).bytes, "not usable"),
        // A version 2 peer's hello ("DMA2", 20 bytes, padded by rdma_cm).
        ([0x44, 0x4D, 0x41, 0x32, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0x10, 0, 0, 0x10, 0, 0] + [UInt8](repeating: 0, count: 36),
         "does not start with the DMAIO magic (wrong protocol or version)"),
    ])
    func malformedHellosAreRefused(bytes: [UInt8], expected: String) {
        #expect {
            _ = try WireProtocol.Hello(parsing: bytes)
        } throws: { error in
            (error as! RDMAError).message.contains(expected)
        }
    }

    @Test func refusalRoundTripsAndOnlyARefusalParses() {
        let refusal = WireProtocol.Refusal(errno: 105)  // ENOBUFS
        #expect(refusal.bytes.count == 8)
        #expect(WireProtocol.Refusal(parsing: refusal.bytes + Array(repeating: 0, count: 40)) == refusal)
        #expect(WireProtocol.Refusal(parsing: Array(refusal.bytes.prefix(7))) == nil)
        #expect(WireProtocol.Refusal(parsing: WireProtocol.Hello(credits: 1, room: 1, slotSize: 64, largestMessage: 64).bytes) == nil)
        #expect(WireProtocol.Refusal(parsing: [UInt8](repeating: 0, count: 56)) == nil)  // a plain rdma_reject, padded
    }

    @Test func immediateCarriesCreditsAndTheUpdateFlag() {
        let data = WireProtocol.immediate(returning: 5, creditUpdate: false)
        #expect(data == 5)
        let update = WireProtocol.immediate(returning: 7, creditUpdate: true)
        #expect(update & WireProtocol.creditUpdateFlag != 0)
        #expect(update & WireProtocol.creditMask == 7)
    }

    @Test(arguments: [(UInt32(0), false), (1, false), (1, true), (8, false), (WireProtocol.creditMask, false), (WireProtocol.creditMask, true)])
    func decodingGivesBackWhatWasEncoded(credits: UInt32, creditUpdate: Bool) {
        let decoded = WireProtocol.decode(immediate: WireProtocol.immediate(returning: credits, creditUpdate: creditUpdate))
        #expect(decoded.credits == Int(credits))
        #expect(decoded.isCreditUpdate == creditUpdate)
    }

    @Test func donesAndTheRendezvousFlagRideBesideTheCredits() {
        let request = WireProtocol.immediate(returning: 3, dones: 63, creditUpdate: false, rendezvous: true)
        #expect(WireProtocol.decode(immediate: request).credits == 3)
        #expect(!WireProtocol.decode(immediate: request).isCreditUpdate)
        #expect(WireProtocol.dones(in: request) == 63)
        #expect(WireProtocol.isRendezvous(request))
        let update = WireProtocol.immediate(returning: 1, dones: 2, creditUpdate: true)
        #expect(WireProtocol.dones(in: update) == 2)
        #expect(!WireProtocol.isRendezvous(update), "a credit update is never a request")
        #expect(!WireProtocol.isRendezvous(WireProtocol.immediate(returning: 9, creditUpdate: false)))
    }

    @Test func aRendezvousRequestRoundTripsAndOnlyTwentyFourBytesParse() {
        let request = WireProtocol.RendezvousRequest(length: 10 << 20, address: 0x7F12_3456_7000, key: 0xABCD_EF01)
        var bytes = [UInt8](repeating: 0xFF, count: 32)
        bytes.withUnsafeMutableBytes { request.write(to: $0.baseAddress!) }
        bytes.withUnsafeBytes { raw in
            #expect(WireProtocol.RendezvousRequest(reading: raw.baseAddress!, count: 24) == request)
            #expect(WireProtocol.RendezvousRequest(reading: raw.baseAddress!, count: 23) == nil)
            #expect(WireProtocol.RendezvousRequest(reading: raw.baseAddress!, count: 64) == nil)
        }
    }
}
