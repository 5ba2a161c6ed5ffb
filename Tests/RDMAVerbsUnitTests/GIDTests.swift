import Testing
@testable import RDMAVerbs

@Suite struct GIDTests {
    @Test func ipv4MappedGIDRoundTrips() throws {
        let address = try #require(IPv4Address("10.99.0.1"))
        let gid = GID(ipv4MappedFrom: address)
        #expect(gid.description == "0000:0000:0000:0000:0000:ffff:0a63:0001")
        #expect(gid.ipv4 == address)
    }

    @Test func nonMappedGIDHasNoIPv4() throws {
        let gid = try #require(GID(bytes: [0xfe, 0x80] + Array(repeating: 0, count: 13) + [1]))
        #expect(gid.ipv4 == nil)
        #expect(gid.description == "fe80:0000:0000:0000:0000:0000:0000:0001")
    }

    @Test func gidNeedsSixteenBytes() {
        #expect(GID(bytes: [1, 2, 3]) == nil)
        #expect(GID(bytes: Array(repeating: 0, count: 17)) == nil)
    }

    @Test func gidEqualityAndHashing() throws {
        let a = GID(ipv4MappedFrom: try #require(IPv4Address("192.0.2.7")))
        let b = try #require(GID(bytes: Array(repeating: 0, count: 10) + [0xff, 0xff, 192, 0, 2, 7]))
        #expect(a == b)
        #expect(Set([a, b]).count == 1)
    }

    @Test func ipv4ParsingRejectsJunk() {
        #expect(IPv4Address("10.99.0") == nil)
        #expect(IPv4Address("10.99.0.256") == nil)
        #expect(IPv4Address("ten") == nil)
        #expect(IPv4Address("127.0.0.1")?.description == "127.0.0.1")
    }
}
