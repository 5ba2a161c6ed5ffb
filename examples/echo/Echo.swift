// echo: a many-client echo service on the proposal's API, written the way an async Swift
// server is: one task per connection on one event channel, every wait a suspension (no thread
// held), cancellation by structured concurrency.
//
//   server:  echo server [-b ADDR] [-p PORT] [--clients N]
//   client:  echo client SERVER [-p PORT] [--clients 16] [--requests 100] [--max-size 65536]
//                        [--cancel]

import ArgumentParser
import DMAIO
import ExampleSupport

#if canImport(Glibc)
import Glibc
#endif

@main
struct Echo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "echo",
        abstract: "A many-client echo service over RDMA, one task per connection.",
        discussion: """
            Start the server, then the client with the server's address: the client opens \
            --clients connections on one event channel and sends each --requests messages of \
            1 B to --max-size bytes; the server echoes them; the client checks every byte.
            Example on soft-RoCE:  echo server -b 10.99.0.1 &  echo client 10.99.0.1
            """,
        subcommands: [EchoServer.self, EchoClient.self])
}

/// Slots of 64 KiB: the largest message either side sends.
let slotSize = 64 << 10
/// Receive slots each side grants per connection.
let credits = 8

struct EchoServer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "server", abstract: "Echoes every message back to its sender.")

    @Option(name: [.short, .customLong("bind")], help: "The address to listen on (an RDMA device's).")
    var bindAddress = "10.99.0.1"

    @Option(name: [.short, .customLong("port")], help: "The port to listen on.")
    var port: UInt16 = 7471

    @Option(help: "Stop once this many connections were served (default: serve forever).")
    var clients: Int?

    func run() async throws {
        let events = try EventChannel()
        // Each connection takes 2 × credits slots to receive, and holds at most `credits`
        // replies in flight: 64 MiB serves 32 connections at once.
        let area = try DMAArea(size: 64 << 20)
        let listener = try Listener(on: "\(bindAddress):\(port)", events: events)
        say("echo: listening on \(bindAddress):\(port) (\(events.deviceName))")
        var served = 0
        try await withThrowingDiscardingTaskGroup { group in
            for try await connection in listener.connections {
                group.addTask {
                    do {
                        let echoed = try await Self.serve(connection, area: area)
                        say("echo: \(connection.id): \(echoed) messages echoed, the client closed")
                    } catch {
                        say("echo: \(connection.id): \(error)")
                    }
                }
                served += 1
                if let clients, served == clients { break }
            }
        }
    }

    /// One connection: associate, then echo each message until the client closes.
    static func serve(_ connection: Connection, area: DMAArea) async throws -> Int {
        defer { connection.close() }
        try await connection.associate(area, receiveBytes: credits * slotSize, slotSize: slotSize)
        var echoed = 0
        while let request = try await connection.nextMessage() {
            let reply = try area.reserve(request.count)
            reply.withUnsafeMutableBytes { reply in request.withUnsafeBytes { reply.copyMemory(from: $0) } }
            request.release()
            try await connection.send(reply)  // waits for a credit, never queues without bound
            echoed += 1
        }
        return echoed
    }
}

struct EchoClient: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "client", abstract: "Sends messages on many connections at once and checks their echoes.")

    @Argument(help: "The server's address.")
    var server: String

    @Option(name: [.short, .customLong("port")], help: "The server's port.")
    var port: UInt16 = 7471

    @Option(help: "Connections, each served by a task of its own, on one event channel.")
    var clients = 16

    @Option(help: "Messages per connection.")
    var requests = 100

    @Option(help: "The largest message, in bytes (at most 65536).")
    var maxSize = 65536

    @Flag(help: "Also cancel a task that waits for a message, and show that it ends at once and its connection stays usable.")
    var cancel = false

    func validate() throws {
        guard (1...slotSize).contains(maxSize) else { throw ValidationError("--max-size must be 1 ... \(slotSize)") }
        guard clients >= 1, requests >= 1 else { throw ValidationError("--clients and --requests must be at least 1") }
    }

    func run() async throws {
        let events = try EventChannel()
        let area = try DMAArea(size: 64 << 20)
        let address = "\(server):\(port)"
        let clock = ContinuousClock()
        let start = clock.now
        let echoes = try await withThrowingTaskGroup(of: Int.self) { group in
            for index in 0..<clients {
                group.addTask {
                    let connection = try await Connection.connect(to: address, events: events)
                    defer { connection.close() }
                    try await connection.associate(area, receiveBytes: credits * slotSize, slotSize: slotSize)
                    return try await Self.exchange(on: connection, area: area, client: index, requests: requests, maxSize: maxSize)
                }
            }
            return try await group.reduce(0, +)
        }
        say("echo: \(clients) connections, \(echoes) echoes of 1 B ... \(maxSize) B in \(clock.now - start), content checked: OK")
        if cancel { try await Self.cancelAWaitingTask(address: address, events: events, area: area) }
    }

    /// `requests` round trips of pseudo-random sizes, every byte checked.
    static func exchange(on connection: Connection, area: DMAArea, client: Int, requests: Int, maxSize: Int) async throws -> Int {
        var generator = Generator(seed: UInt64(client + 1))
        for sequence in 0..<requests {
            let size = 1 + Int(generator.next() % UInt64(maxSize))
            let request = try area.reserve(size)
            let tag = UInt64(client) << 32 | UInt64(sequence)
            request.withUnsafeMutableBytes { fill($0, tag: tag) }
            try await connection.send(request)
            guard let reply = try await connection.nextMessage() else {
                throw EchoFailure("connection \(client): the server closed before echo \(sequence)")
            }
            let intact = reply.count == size && reply.withUnsafeBytes { matches($0, tag: tag) }
            reply.release()
            guard intact else { throw EchoFailure("connection \(client): echo \(sequence) differs from what was sent") }
        }
        return requests
    }

    /// A task waits for a message that does not come; cancelling it ends the wait at once, and
    /// the connection goes on.
    static func cancelAWaitingTask(address: String, events: EventChannel, area: DMAArea) async throws {
        let connection = try await Connection.connect(to: address, events: events)
        defer { connection.close() }
        try await connection.associate(area, receiveBytes: credits * slotSize, slotSize: slotSize)
        let waiting = Task {
            if let unexpected = try await connection.nextMessage() {
                unexpected.release()
                throw EchoFailure("a message came where none was sent")
            }
        }
        try await Task.sleep(for: .milliseconds(200))
        let clock = ContinuousClock()
        let cancelled = clock.now
        waiting.cancel()
        let outcome = await waiting.result
        let took = clock.now - cancelled
        guard case .failure(let error) = outcome, error is CancellationError else {
            throw EchoFailure("the cancelled task did not end with CancellationError: \(outcome)")
        }
        _ = try await exchange(on: connection, area: area, client: 1000, requests: 10, maxSize: 4096)
        let milliseconds = Double(took.components.seconds) * 1000 + Double(took.components.attoseconds) / 1e15
        say("echo: a task waiting for a message ended \(milliseconds) ms after its cancel; the connection then echoed 10 more messages: OK")
    }
}

/// Message bytes: the message's tag (connection and sequence number) in its first 8 bytes,
/// then a window into a pseudo-random table that depends on the tag; filling is two copies and
/// checking two comparisons.
let pattern = Pattern(size: slotSize)

func fill(_ buffer: UnsafeMutableRawBufferPointer, tag: UInt64) {
    withUnsafeBytes(of: tag) { header in buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: header.prefix(buffer.count))) }
    if buffer.count > 8 { pattern.fill(UnsafeMutableRawBufferPointer(rebasing: buffer[8...]), sequence: tag % 251) }
}

func matches(_ bytes: UnsafeRawBufferPointer, tag: UInt64) -> Bool {
    let header = withUnsafeBytes(of: tag) { Array($0.prefix(bytes.count)) }
    guard bytes.prefix(8).elementsEqual(header) else { return false }
    return bytes.count <= 8 || pattern.matches(UnsafeRawBufferPointer(rebasing: bytes[8...]), sequence: tag % 251)
}

/// xorshift64: message sizes that differ per connection and per run of the same seed alike.
struct Generator {
    var state: UInt64
    init(seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 | 1 }
    mutating func next() -> UInt64 {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return state
    }
}

struct EchoFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Prints a line at once, also into a pipe.
func say(_ line: String) {
    print(line)
    fflush(nil)
}
