import ExampleSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Ordinary TCP sockets for the socket-upgrade tests: a connected pair over the rxe interface,
/// made with the example tools' socket calls (ExampleSupport's `TCPSocket`).
enum TCPSockets {
    /// A connected pair (client, server) on the rxe interface's address.
    static func pair(host: String = RxeEnvironment.address) throws -> (client: Int32, server: Int32) {
        let port = RxeEnvironment.freshPort()
        let listener = try TCPSocket.listen(on: host, port: port, backlog: 8)
        defer { close(listener) }
        let client = try TCPSocket.connect(to: host, port: port, from: nil)
        let server = accept(listener, nil, nil)
        try #require(server >= 0)
        return (client, server)
    }
}
