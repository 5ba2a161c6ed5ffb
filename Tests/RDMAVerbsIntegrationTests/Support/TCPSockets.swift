import RDMAVerbs
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Ordinary TCP sockets for the socket-upgrade tests: a connected pair over the rxe interface.
enum TCPSockets {
    /// A listening socket on host:port.
    static func listen(host: String, port: UInt16) throws -> Int32 {
        let address = try SocketAddress(host: host, port: port)
        let listener = socket(address.family, Int32(SOCK_STREAM.rawValue), 0)
        try #require(listener >= 0)
        var one: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        try address.withSockaddr { sockaddr throws(RDMAError) in
            guard bind(listener, sockaddr, address.length) == 0 else {
                throw RDMAError(.systemCall, operation: "bind", errno: .init(rawValue: errno), message: "binding \(address)")
            }
        }
        try #require(Glibc.listen(listener, 8) == 0)
        return listener
    }

    /// A socket connected to host:port, optionally from a local address.
    static func connect(host: String, port: UInt16, from source: String? = nil) throws -> Int32 {
        let address = try SocketAddress(host: host, port: port)
        let client = socket(address.family, Int32(SOCK_STREAM.rawValue), 0)
        try #require(client >= 0)
        if let source {
            let local = try SocketAddress(host: source, port: 0)
            try local.withSockaddr { sockaddr throws(RDMAError) in
                guard bind(client, sockaddr, local.length) == 0 else {
                    throw RDMAError(.systemCall, operation: "bind", errno: .init(rawValue: errno), message: "binding \(local)")
                }
            }
        }
        try address.withSockaddr { sockaddr throws(RDMAError) in
            guard Glibc.connect(client, sockaddr, address.length) == 0 else {
                throw RDMAError(.systemCall, operation: "connect", errno: .init(rawValue: errno), message: "connecting to \(address)")
            }
        }
        return client
    }

    /// A connected pair (client, server) on the rxe interface's address.
    static func pair(host: String = RxeEnvironment.address) throws -> (client: Int32, server: Int32) {
        let port = RxeEnvironment.freshPort()
        let listener = try listen(host: host, port: port)
        defer { close(listener) }
        let client = try connect(host: host, port: port)
        let server = accept(listener, nil, nil)
        try #require(server >= 0)
        return (client, server)
    }
}
