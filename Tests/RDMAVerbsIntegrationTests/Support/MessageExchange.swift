import Foundation
import RDMAVerbs
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Two reliable-connected queue pairs joined through rdma_cm that stream numbered messages of
/// many sizes (1 B ... 1 MiB) from a client to a server. The server checks each message's size
/// and every byte, and answers with an 8-byte acknowledgement carrying its sequence number.
/// The client keeps at most `window` messages unacknowledged, and the server keeps more
/// receives than that posted, so no send ever meets an empty receive queue.
struct MessageExchange {
    static let slotSize = 1 << 20
    static let window = 8
    static let serverReceives = 16
    static let clientAckReceives = 16

    var count: Int
    var useEvents: Bool
    var port = RxeEnvironment.freshPort()

    /// Message n's size: 1 MiB every 100th message, otherwise cycling through sizes around the
    /// boundaries that matter (1 B, MTU, pages, 64 KiB).
    static func size(of sequence: Int) -> Int {
        if sequence % 100 == 99 { return slotSize }
        let sizes = [1, 2, 3, 7, 8, 63, 64, 100, 255, 256, 1000, 1024, 4095, 4096, 4097, 8192, 16384,
                     65535, 65536, 100_000, 262_144, 1_048_575]
        return sizes[sequence % sizes.count]
    }

    /// Runs the exchange; returns how many messages the server received and verified.
    func run() throws -> Int {
        let address = try SocketAddress(host: RxeEnvironment.address, port: port)
        let listenerChannel = try ConnectionEventChannel()
        let listener = try ConnectionID(channel: listenerChannel)
        try listener.bind(to: address)
        try listener.listen(backlog: 1)

        let server = ServerThread(exchange: self, channel: listenerChannel)
        server.start()
        let client = try Peer(connectingTo: address, events: useEvents, exchange: self)
        try client.runClient()
        let received = try server.join()
        try client.id.disconnect()
        return received
    }
}

/// A pattern table: message n is the table shifted by n % 251, so filling is one copy and
/// checking one comparison.
let patternTable: [UInt8] = {
    var state: UInt32 = 0x9E37_79B9
    return (0..<(MessageExchange.slotSize + 256)).map { _ in
        state ^= state << 13; state ^= state >> 17; state ^= state << 5
        return UInt8(truncatingIfNeeded: state)
    }
}()

func fillMessage(_ destination: UnsafeMutableRawPointer, sequence: Int, size: Int) {
    patternTable.withUnsafeBytes { destination.copyMemory(from: $0.baseAddress! + sequence % 251, byteCount: size) }
}

func messageMatches(_ source: UnsafeRawPointer, sequence: Int, size: Int) -> Bool {
    patternTable.withUnsafeBytes { memcmp(source, $0.baseAddress! + sequence % 251, size) == 0 }
}

/// One side: its queue pair, registered memory and completion queue.
final class Peer: @unchecked Sendable {
    let id: ConnectionID
    let protectionDomain: ProtectionDomain
    let region: MemoryRegion
    let completions: CompletionQueue
    let queuePair: QueuePair
    let exchange: MessageExchange
    private var polled = [WorkCompletion](repeating: WorkCompletion(), count: 32)

    private init(id: ConnectionID, events: Bool, exchange: MessageExchange, regionSize: Int) throws {
        let context = try #require(id.context)
        self.id = id
        self.exchange = exchange
        protectionDomain = try ProtectionDomain(context: context)
        region = try MemoryRegion(protectionDomain: protectionDomain, length: regionSize)
        let channel = events ? try CompletionChannel(context: context) : nil
        completions = try CompletionQueue(context: context, capacity: 128, channel: channel)
        queuePair = try id.createQueuePair(
            protectionDomain: protectionDomain, sendQueue: completions, receiveQueue: completions,
            capabilities: QueuePairCapabilities(maxSendRequests: 32, maxReceiveRequests: 32, maxInlineData: 64))
        if events { try completions.requestNotification() }
    }

    /// Client: resolves, connects, with its acknowledgement receives posted first.
    convenience init(connectingTo address: SocketAddress, events: Bool, exchange: MessageExchange) throws {
        let id = try ConnectionID(channel: try ConnectionEventChannel())
        try id.resolve(to: address, timeout: .seconds(5))
        let slots = MessageExchange.window * MessageExchange.slotSize
        try self.init(id: id, events: events, exchange: exchange, regionSize: slots + MessageExchange.clientAckReceives * 64)
        for k in 0..<MessageExchange.clientAckReceives { try postAckReceive(k) }
        _ = try id.connect(timeout: .seconds(10))
    }

    /// Server: takes the connection request, posts its receives, accepts.
    convenience init(accepting channel: ConnectionEventChannel, events: Bool, exchange: MessageExchange) throws {
        let request = try #require(try channel.expectEvent(.connectRequest, timeout: .seconds(10), while: "waiting for the client").request)
        try self.init(id: request, events: events, exchange: exchange, regionSize: MessageExchange.serverReceives * MessageExchange.slotSize)
        for slot in 0..<MessageExchange.serverReceives { try postMessageReceive(slot) }
        _ = try request.accept(timeout: .seconds(10))
    }

    private func postAckReceive(_ k: Int) throws {
        let offset = MessageExchange.window * MessageExchange.slotSize + k * 64
        try queuePair.postReceive(try region.segment(offset: offset, length: 64), requestID: UInt64(1000 + k))
    }

    private func postMessageReceive(_ slot: Int) throws {
        try queuePair.postReceive(try region.segment(offset: slot * MessageExchange.slotSize, length: MessageExchange.slotSize), requestID: UInt64(slot))
    }

    /// Polls once; when nothing is there and events are on, sleeps on the channel and re-arms.
    private func forEachCompletion(_ body: (WorkCompletion) throws -> Void) throws {
        let count = try completions.poll(into: &polled)
        for index in 0..<count {
            let completion = polled[index]
            guard completion.isSuccess else { throw RDMAError.workCompletion(completion, "request \(completion.requestID)") }
            try body(completion)
        }
        if count == 0, let channel = completions.channel {
            guard try channel.waitForEvent(timeout: .seconds(30)) != nil else {
                throw RDMAError(.timedOut, operation: "ibv_get_cq_event", message: "no completion event within 30 s")
            }
            try completions.requestNotification()
        }
    }

    func runClient() throws {
        let count = exchange.count, window = MessageExchange.window
        var nextToSend = 0, acknowledged = 0
        var slotBusy = [Bool](repeating: false, count: window)
        while acknowledged < count {
            while nextToSend < count, nextToSend - acknowledged < window, !slotBusy[nextToSend % window] {
                let slot = nextToSend % window, size = MessageExchange.size(of: nextToSend)
                fillMessage(region.bytes.baseAddress! + slot * MessageExchange.slotSize, sequence: nextToSend, size: size)
                try queuePair.postSend(try region.segment(offset: slot * MessageExchange.slotSize, length: size), requestID: UInt64(slot))
                slotBusy[slot] = true
                nextToSend += 1
            }
            try forEachCompletion { completion in
                if completion.isReceive {
                    let k = Int(completion.requestID) - 1000
                    let offset = window * MessageExchange.slotSize + k * 64
                    let sequence = region.bytes.load(fromByteOffset: offset, as: UInt64.self)
                    guard completion.byteCount == 8, sequence == UInt64(acknowledged) else {
                        throw RDMAError(.workCompletion, operation: "test", message: "acknowledgement \(sequence) (\(completion.byteCount) bytes) arrived where \(acknowledged) was due")
                    }
                    acknowledged += 1
                    try postAckReceive(k)
                } else {
                    slotBusy[Int(completion.requestID)] = false
                }
            }
        }
    }

    /// Receives and checks every message, acknowledging each; returns the count verified.
    func runServer() throws -> Int {
        var expected = 0
        let acknowledgement = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
        defer { acknowledgement.deallocate() }
        let ackSegment = ScatterGatherElement(address: UInt64(UInt(bitPattern: acknowledgement)), length: 8, localKey: 0)
        while expected < exchange.count {
            try forEachCompletion { completion in
                guard completion.isReceive else { return }
                let slot = Int(completion.requestID)
                let size = MessageExchange.size(of: expected)
                let start = region.bytes.baseAddress! + slot * MessageExchange.slotSize
                guard completion.byteCount == size else {
                    throw RDMAError(.workCompletion, operation: "test", message: "message \(expected) has \(completion.byteCount) bytes, \(size) were sent")
                }
                guard messageMatches(start, sequence: expected, size: size) else {
                    throw RDMAError(.workCompletion, operation: "test", message: "message \(expected) (\(size) bytes) arrived corrupted or out of order")
                }
                try postMessageReceive(slot)
                acknowledgement.pointee = UInt64(expected)
                // Inline: the 8 bytes are copied into the work request at post time, so the
                // buffer needs no registration and may change right after.
                try queuePair.postSend(ackSegment, requestID: 5000, inline: true)
                expected += 1
            }
        }
        return expected
    }
}

/// The server side on a thread of its own, since accept and the client's connect wait for
/// each other.
final class ServerThread: @unchecked Sendable {
    private let exchange: MessageExchange
    private let channel: ConnectionEventChannel
    private let done = DispatchSemaphore(value: 0)
    private var result: Result<Int, any Error> = .success(0)

    init(exchange: MessageExchange, channel: ConnectionEventChannel) {
        self.exchange = exchange
        self.channel = channel
    }

    func start() {
        let thread = Thread { [self] in
            result = Result {
                let server = try Peer(accepting: channel, events: exchange.useEvents, exchange: exchange)
                return try server.runServer()
            }
            done.signal()
        }
        thread.stackSize = 8 << 20
        thread.start()
    }

    func join() throws -> Int {
        done.wait()
        return try result.get()
    }
}
