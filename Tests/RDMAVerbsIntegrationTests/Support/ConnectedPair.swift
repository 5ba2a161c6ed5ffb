import DMAIO
import Foundation
import RDMAVerbs
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A client and a server connection, each with its own area and event channel, associated
/// through the proposal's API over the rxe device: through rdma_cm, or by upgrading a connected
/// TCP socket (`dma_assoc` on a socket).
final class ConnectedPair: @unchecked Sendable {
    enum Transport: Sendable, CustomTestStringConvertible {
        case connectionManager, tcpSocket
        var testDescription: String { self == .connectionManager ? "rdma_cm" : "TCP socket" }
    }

    let clientEvents: EventChannel
    let serverEvents: EventChannel
    let clientArea: DMAArea
    let serverArea: DMAArea
    let client: Connection
    let server: Connection
    /// The TCP sockets under a socket pair (client, server); closed with the pair.
    let sockets: (client: Int32, server: Int32)?
    /// What the pair keeps alive beside its connections (a shared pool).
    private let kept: AnyObject?

    /// A pair made by the caller.
    init(client: (Connection, EventChannel, DMAArea), server: (Connection, EventChannel, DMAArea),
         sockets: (client: Int32, server: Int32)?, keeping kept: AnyObject? = nil) {
        (self.client, clientEvents, clientArea) = client
        (self.server, serverEvents, serverArea) = server
        self.sockets = sockets
        self.kept = kept
    }

    /// `serverAreaSize`: the server's area, when it differs from the client's (`areaSize`).
    init(areaSize: Int = 4 << 20, serverAreaSize: Int? = nil, receiveBytes: Int = 256 << 10, slotSize: Int = 4096,
         transport: Transport = .connectionManager) throws {
        kept = nil
        serverEvents = try EventChannel()
        clientEvents = try EventChannel()
        serverArea = try DMAArea(size: serverAreaSize ?? areaSize)
        clientArea = try DMAArea(size: areaSize)
        switch transport {
        case .connectionManager:
            (client, server) = try Self.connect(
                client: (clientEvents, clientArea), server: (serverEvents, serverArea), receiveBytes: receiveBytes, slotSize: slotSize)
            sockets = nil
        case .tcpSocket:
            let pair = try TCPSockets.pair()
            sockets = pair
            // Both ends run the handshake at once: the server's on a thread of its own.
            let upgraded = OnThread { [serverArea, serverEvents] () throws -> Connection in
                let connection = try Connection(socket: pair.server, events: serverEvents)
                try connection.associate(serverArea, receiveBytes: receiveBytes, slotSize: slotSize)
                return connection
            }
            client = try Connection(socket: pair.client, events: clientEvents)
            try client.associate(clientArea, receiveBytes: receiveBytes, slotSize: slotSize)
            server = try upgraded.join()
        }
    }

    /// Connects a client to a fresh listener through rdma_cm and associates both ends; for a
    /// test that must own the two connections itself (drop one while the other lives on).
    /// Nothing else keeps a reference to either connection. `source`: the client's address
    /// (default: as routed).
    static func connect(client: (events: EventChannel, area: DMAArea), server: (events: EventChannel, area: DMAArea),
                        receiveBytes: Int, slotSize: Int, from source: String? = nil) throws -> (client: Connection, server: Connection) {
        let serverArea = server.area
        return try connect(client: client, from: source, receiveBytes: receiveBytes, slotSize: slotSize, serverEvents: server.events) { connection in
            try connection.associate(serverArea, receiveBytes: receiveBytes, slotSize: slotSize)
        }
    }

    /// As ``connect(client:server:receiveBytes:slotSize:from:)``, the server's end receiving
    /// through `pool` with `credits` (and `largeMessageBytes`, when given).
    static func connect(client: (events: EventChannel, area: DMAArea), toPool pool: SharedReceivePool, serverEvents: EventChannel,
                        credits: Int, largeMessageBytes: Int? = nil) throws -> (client: Connection, server: Connection) {
        try connect(client: client, from: nil, receiveBytes: credits * pool.slotSize, slotSize: pool.slotSize, serverEvents: serverEvents) { connection in
            try connection.associate(pool, credits: credits, largeMessageBytes: largeMessageBytes)
        }
    }

    /// A fresh listener on `serverEvents` whose one accepted connection `associateServer`
    /// associates (on a thread of its own), and a client from `source` associated with its area.
    private static func connect(
        client: (events: EventChannel, area: DMAArea), from source: String?, receiveBytes: Int, slotSize: Int, serverEvents: EventChannel,
        associateServer: @escaping @Sendable (Connection) throws -> Void
    ) throws -> (client: Connection, server: Connection) {
        let address = "\(RxeEnvironment.address):\(RxeEnvironment.freshPort())"
        let listener = try Listener(on: address, events: serverEvents)
        let accepted = OnThread { () throws -> Connection in
            let connection = try listener.accept(timeout: .seconds(10))
            try associateServer(connection)
            return connection
        }
        let connection = try Connection(to: address, from: source, events: client.events)
        try connection.associate(client.area, receiveBytes: receiveBytes, slotSize: slotSize)
        return (connection, try accepted.join())
    }

    deinit {
        client.close()
        server.close()
        if let sockets {
            close(sockets.client)
            close(sockets.server)
        }
    }
}

/// Runs `body` on a thread of its own (verbs calls block); `join` returns its result.
final class OnThread<T>: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private var result: Result<T, any Error>?

    init(_ body: @escaping () throws -> T) {
        nonisolated(unsafe) let body = body
        let thread = Thread { [self] in
            result = Result { try body() }
            done.signal()
        }
        thread.stackSize = 8 << 20
        thread.start()
    }

    func join() throws -> T {
        done.wait()
        return try result!.get()
    }
}

/// Message n of a stream: its size and its bytes (a window into a pseudo-random table shifted
/// by n), so that loss, duplication, reordering and corruption all show as a mismatch.
enum StreamMessage {
    static func size(_ sequence: Int, slotSize: Int) -> Int { 1 + (sequence &* 7919) % slotSize }

    static func fill(_ buffer: UnsafeMutableRawBufferPointer, sequence: Int) {
        fillMessage(buffer.baseAddress!, sequence: sequence, size: buffer.count)
    }

    static func matches(_ bytes: UnsafeRawBufferPointer, sequence: Int) -> Bool {
        messageMatches(bytes.baseAddress!, sequence: sequence, size: bytes.count)
    }

    /// Whether `message` is message `sequence` (its length included).
    static func matches(_ message: borrowing ReceivedBuffer, sequence: Int) -> Bool {
        message.withUnsafeBytes { matches($0, sequence: sequence) }
    }
}
