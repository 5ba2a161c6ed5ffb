import Testing
@testable import RDMAVerbs

@Suite struct SocketAddressTests {
    @Test func parsesIPv4WithPort() throws {
        let address = try SocketAddress(parsing: "10.99.0.1:7471")
        #expect(address.host == "10.99.0.1")
        #expect(address.port == 7471)
        #expect(address.ipv4 == IPv4Address("10.99.0.1"))
        #expect(address.description == "10.99.0.1:7471")
    }

    @Test func parsesBracketedIPv6() throws {
        let address = try SocketAddress(parsing: "[::1]:18515")
        #expect(address.host == "::1")
        #expect(address.port == 18515)
        #expect(address.ipv4 == nil)
        #expect(address.description == "[::1]:18515")
    }

    @Test(arguments: [
        ("10.99.0.1", "write HOST:PORT"),
        ("10.99.0.1:", "no valid port"),
        ("10.99.0.1:65536", "no valid port"),
        ("10.99.0.1:http", "no valid port"),
        (":7471", "has no host"),
        ("::1:7471", "write HOST:PORT"),
        ("[::1]7471", "write [IPv6]:PORT"),
    ])
    func rejectsMalformedText(text: String, expected: String) {
        #expect {
            _ = try SocketAddress(parsing: text)
        } throws: { error in
            let error = error as! RDMAError
            return error.code == .invalidArgument && error.message.contains(expected)
        }
    }

    @Test func unresolvableHostSaysSo() {
        #expect {
            _ = try SocketAddress(host: "no-such-host.invalid", port: 1)
        } throws: { error in
            let error = error as! RDMAError
            return error.code == .addressNotAvailable && error.message.contains("cannot resolve host \"no-such-host.invalid\"")
        }
    }

    @Test func equalAddressesHashAlike() throws {
        let a = try SocketAddress(parsing: "127.0.0.1:9")
        let b = try SocketAddress(host: "127.0.0.1", port: 9)
        #expect(a == b)
        #expect(Set([a, b]).count == 1)
        #expect(a != (try SocketAddress(parsing: "127.0.0.1:10")))
    }
}
