import DMAIO
import Foundation
import RDMAVerbs

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

/// Sleeps, in seconds.
func pause(_ duration: Duration) {
    Thread.sleep(forTimeInterval: duration.seconds)
}
