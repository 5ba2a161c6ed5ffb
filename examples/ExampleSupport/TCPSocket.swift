import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

/// Ordinary TCP sockets for the example tools: `stream --tcp` streams over one, and
/// `pingpong -g` exchanges its queue-pair numbers over one, as `ibv_rc_pingpong` does.
public enum TCPSocket {
    /// Listens on host:port, takes one connection, closes the listener; calls `listening`
    /// once the port accepts connections.
    public static func acceptOne(on host: String, port: UInt16, listening: () -> Void) throws(RDMAError) -> Int32 {
        let listener = try listen(on: host, port: port)
        defer { close(listener) }
        listening()
        return Int32(try check("accept", accept(listener, nil, nil)))
    }

    /// A socket listening on host:port (the address may be reused at once).
    public static func listen(on host: String, port: UInt16, backlog: Int32 = 1) throws(RDMAError) -> Int32 {
        let address = try SocketAddress(host: host, port: port)
        let listener = Int32(try check("socket", socket(address.family, Int32(SOCK_STREAM.rawValue), 0)))
        do throws(RDMAError) {
            var one: Int32 = 1
            setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            try address.withSockaddr { sockaddr throws(RDMAError) in
                _ = try check("bind", bind(listener, sockaddr, address.length))
            }
            _ = try check("listen", Glibc.listen(listener, backlog))
        } catch {
            close(listener)
            throw error
        }
        return listener
    }

    /// A socket connected to host:port, leaving from `source` when given.
    public static func connect(to host: String, port: UInt16, from source: String?) throws(RDMAError) -> Int32 {
        let address = try SocketAddress(host: host, port: port)
        let socket = Int32(try check("socket", Glibc.socket(address.family, Int32(SOCK_STREAM.rawValue), 0)))
        do throws(RDMAError) {
            if let source {
                let local = try SocketAddress(host: source, port: 0)
                try local.withSockaddr { sockaddr throws(RDMAError) in
                    _ = try check("bind", bind(socket, sockaddr, local.length))
                }
            }
            try address.withSockaddr { sockaddr throws(RDMAError) in
                _ = try check("connect", Glibc.connect(socket, sockaddr, address.length))
            }
        } catch {
            close(socket)
            throw error
        }
        return socket
    }

    /// The result of a socket call, or its errno as an error.
    public static func check<T: BinaryInteger>(_ operation: String, _ result: T) throws(RDMAError) -> Int {
        guard result >= 0 else {
            throw RDMAError(.systemCall, operation: operation, errno: .init(rawValue: errno), message: "TCP \(operation) failed")
        }
        return Int(result)
    }
}
