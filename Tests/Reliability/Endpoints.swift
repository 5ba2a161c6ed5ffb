import DMAIO
import ExampleSupport
import Foundation
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

/// The two ends of a case's connections: host 0 listens, host 1 connects, both associate with
/// an area of their own.
enum Endpoints {
    /// Host 0: takes `count` connections on `listener` and associates each with `area`.
    static func accept(_ count: Int, on listener: Listener, area: DMAArea, receiveBytes: Int, slotSize: Int) throws -> [Connection] {
        try (0..<count).map { _ in
            let connection = try listener.accept(timeout: .seconds(60))
            try connection.associate(area, receiveBytes: receiveBytes, slotSize: slotSize, timeout: .seconds(30))
            return connection
        }
    }

    /// Host 1: connects to host 0's listener and associates with `area`.
    static func connect(to address: String, port: UInt16, events: EventChannel, area: DMAArea, receiveBytes: Int, slotSize: Int) throws -> Connection {
        let connection = try Connection(to: "\(address):\(port)", events: events, timeout: .seconds(10))
        try connection.associate(area, receiveBytes: receiveBytes, slotSize: slotSize, timeout: .seconds(30))
        return connection
    }
}

extension Endpoints {
    /// Host 0: takes one TCP connection on `listener` (waiting up to `wait`) and upgrades it
    /// (`dma_assoc` on a socket). The socket is the caller's to close after the connection.
    static func acceptSocket(
        on listener: Int32, events: EventChannel, area: DMAArea, receiveBytes: Int, slotSize: Int,
        wait: Duration = .seconds(60), timeout: Duration = .seconds(30)
    ) throws -> (Connection, Int32) {
        try waitReadable(listener, timeout: wait, what: "host 1's TCP connection")
        let socket = Int32(try TCPSocket.check("accept", Glibc.accept(listener, nil, nil)))
        return (try upgrade(socket, events: events, area: area, receiveBytes: receiveBytes, slotSize: slotSize, timeout: timeout), socket)
    }

    /// Host 1: connects a TCP socket to host 0 and upgrades it.
    static func connectSocket(
        to address: String, port: UInt16, events: EventChannel, area: DMAArea, receiveBytes: Int, slotSize: Int,
        timeout: Duration = .seconds(30)
    ) throws -> (Connection, Int32) {
        let socket = try TCPSocket.connect(to: address, port: port, from: nil)
        return (try upgrade(socket, events: events, area: area, receiveBytes: receiveBytes, slotSize: slotSize, timeout: timeout), socket)
    }

    /// Upgrades a connected TCP socket and associates the connection; closes the socket when
    /// that fails.
    private static func upgrade(_ socket: Int32, events: EventChannel, area: DMAArea, receiveBytes: Int, slotSize: Int, timeout: Duration) throws -> Connection {
        do {
            let connection = try Connection(socket: socket, events: events)
            try connection.associate(area, receiveBytes: receiveBytes, slotSize: slotSize, timeout: timeout)
            return connection
        } catch {
            close(socket)
            throw error
        }
    }
}

/// Sleeps, in seconds.
func pause(_ duration: Duration) {
    Thread.sleep(forTimeInterval: duration.seconds)
}
