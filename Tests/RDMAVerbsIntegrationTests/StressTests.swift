@testable import DMAIO
import Foundation
import RDMAVerbs
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension RxeIntegration {
    /// Many threads and tasks on the same event channels at once.
    @Suite struct Stress {
        init() throws { try RxeEnvironment.requireRxeDevice() }

        /// Eight lanes share two event channels (the clients' and the servers') and two areas for
        /// a minute (`DMAIO_STRESS_SECONDS`): each connects, streams a few hundred checked
        /// messages, closes one side or the other, and starts again. Six lanes are threads on the
        /// blocking API (sending, receiving, releasing in and out of order, waiting on the shared
        /// channel, taking each other's events); two are tasks on the async API. Meanwhile a task
        /// consumes the server channel's events with `for try await`, and a thread sleeps in
        /// poll() on the client channel's descriptor. Nothing may crash or hang, every message
        /// must arrive once, intact and in order, and every byte of the areas must come back.
        @Test func eightLanesShareTheChannelsForAMinute() async throws {
            let seconds = Int(ProcessInfo.processInfo.environment["DMAIO_STRESS_SECONDS"] ?? "") ?? 60
            let world = try StressWorld()
            let deadline = ContinuousClock.now + .seconds(seconds)
            let stop = Flag()
            let consumer = Task {
                var taken = 0
                for try await _ in world.serverEvents {
                    taken += 1
                    if stop.isSet { break }
                }
                return taken
            }
            let poller = OnThread { () throws -> Int in
                var wakeUps = 0
                var descriptor = pollfd(fd: world.clientEvents.fileDescriptor, events: Int16(POLLIN), revents: 0)
                while !stop.isSet {
                    if poll(&descriptor, 1, 50) > 0 { wakeUps += 1 }
                    while try world.clientEvents.next() != nil {}
                }
                return wakeUps
            }
            let threads = (0..<6).map { lane in OnThread { try world.runLane(lane, until: deadline) } }
            let tasks = (6..<8).map { lane in Task { try await world.runAsyncLane(lane, until: deadline) } }
            var results: [StressWorld.LaneResult] = []
            for thread in threads { results.append(try thread.join()) }
            for task in tasks { results.append(try await task.value) }
            stop.set()
            let wakeUps = try poller.join()
            // The consumer ends at its next event: nudge it with one.
            let last = try StressWorld.Pair(world, lane: 99)
            last.close(clientFirst: true)
            let consumed = try await value(of: consumer, within: .seconds(30))
            for result in results {
                print("stress: lane \(result.lane): \(result.generations) connections, \(result.messages) messages checked, \(result.outOfOrderReleases) released out of order")
            }
            print("stress: the for-await consumer took \(consumed.map(String.init) ?? "?") events; the poll() thread woke \(wakeUps) times")
            #expect(results.allSatisfy { $0.generations >= 2 && $0.messages > 0 }, "a lane made no progress")
            #expect(consumed != nil, "the for-await consumer did not end")
            // Every connection is closed: the areas get every byte back once the channels have
            // taken the last completions.
            let drained = ContinuousClock.now + .seconds(15)
            while world.clientArea.bytesInUse + world.serverArea.bytesInUse > 0, ContinuousClock.now < drained {
                while try world.clientEvents.next() != nil {}
                while try world.serverEvents.next() != nil {}
                usleep(10_000)
            }
            #expect(world.clientArea.bytesInUse == 0 && world.serverArea.bytesInUse == 0,
                    "left in use: \(world.clientArea.bytesInUse) B of the clients' area, \(world.serverArea.bytesInUse) B of the servers'")
        }
    }
}

/// A flag that threads and tasks share.
final class Flag: Sendable {
    private let value = Atomic<Bool>(false)
    var isSet: Bool { value.load(ordering: .acquiring) }
    func set() { value.store(true, ordering: .releasing) }
}

/// The channels and areas the stress lanes share.
final class StressWorld: Sendable {
    let clientEvents: EventChannel
    let serverEvents: EventChannel
    let clientArea: DMAArea
    let serverArea: DMAArea
    static let slotSize = 4096
    static let credits = 16

    init() throws {
        clientEvents = try EventChannel()
        serverEvents = try EventChannel()
        clientArea = try DMAArea(size: 16 << 20)
        serverArea = try DMAArea(size: 16 << 20)
    }

    struct LaneResult: Sendable {
        var lane: Int
        var generations = 0
        var messages = 0
        var outOfOrderReleases = 0
    }

    /// One connection of a lane: a client on the shared client channel, a server on the shared
    /// server channel.
    struct Pair: Sendable {
        let client: Connection
        let server: Connection

        init(_ world: StressWorld, lane: Int) throws {
            (client, server) = try ConnectedPair.connect(
                client: (world.clientEvents, world.clientArea), server: (world.serverEvents, world.serverArea),
                receiveBytes: StressWorld.credits * StressWorld.slotSize, slotSize: StressWorld.slotSize)
        }

        func close(clientFirst: Bool) {
            if clientFirst { client.close(); server.close() } else { server.close(); client.close() }
        }
    }

    /// A lane on the blocking API, in a thread of its own.
    func runLane(_ lane: Int, until deadline: ContinuousClock.Instant) throws -> LaneResult {
        var result = LaneResult(lane: lane)
        var generator = SystemRandomNumberGenerator()
        while ContinuousClock.now < deadline {
            let pair = try Pair(self, lane: lane)
            let count = Int.random(in: 100...400, using: &generator)
            let base = lane << 24 | result.generations << 12
            var sent = 0, received = 0
            // Every other message is held until the next one arrived, and released after it:
            // out of order.
            var held: ReceivedBuffer? = nil
            let stepDeadline = ContinuousClock.now + .seconds(60)
            while received < count {
                guard ContinuousClock.now < stepDeadline else {
                    throw TestFailure("lane \(lane): stuck at \(sent) sent, \(received) received of \(count)")
                }
                // Send what the area and the credits allow.
                while sent < count, sent - received < StressWorld.credits {
                    let size = StreamMessage.size(base + sent, slotSize: StressWorld.slotSize)
                    guard let buffer = try? clientArea.reserve(size) else { break }
                    buffer.withUnsafeMutableBytes { StreamMessage.fill($0, sequence: base + sent) }
                    try pair.client.send(buffer, cookie: UInt64(sent))
                    sent += 1
                }
                if let message = try pair.server.receive() {
                    let sequence = base + received
                    let intact = message.count == StreamMessage.size(sequence, slotSize: StressWorld.slotSize) && StreamMessage.matches(message, sequence: sequence)
                    guard intact else {
                        message.release()
                        throw TestFailure("lane \(lane): message \(received) lost, duplicated, reordered or corrupted")
                    }
                    received += 1
                    if let older = held.take() {
                        message.release()
                        older.release()
                        result.outOfOrderReleases += 1
                    } else if received < count {
                        held = consume message
                    } else {
                        message.release()
                    }
                } else if Bool.random(using: &generator) {
                    _ = try serverEvents.wait(timeout: .milliseconds(20))
                } else {
                    _ = try clientEvents.wait(timeout: .milliseconds(20))
                }
            }
            held.take()?.release()
            pair.close(clientFirst: Bool.random(using: &generator))
            result.generations += 1
            result.messages += received
        }
        return result
    }

    /// A lane on the async API, in a task: sends wait for credits, receives for messages.
    func runAsyncLane(_ lane: Int, until deadline: ContinuousClock.Instant) async throws -> LaneResult {
        var result = LaneResult(lane: lane)
        while ContinuousClock.now < deadline {
            let pair = try Pair(self, lane: lane)
            let count = Int.random(in: 100...400)
            let base = lane << 24 | result.generations << 12
            let sender = Task {
                for index in 0..<count {
                    let size = StreamMessage.size(base + index, slotSize: StressWorld.slotSize)
                    var buffer: SendBuffer? = nil
                    while buffer == nil {
                        do { buffer = try clientArea.reserve(size) } catch { try await Task.sleep(for: .milliseconds(1)) }
                    }
                    buffer!.withUnsafeMutableBytes { StreamMessage.fill($0, sequence: base + index) }
                    try await pair.client.send(buffer.take()!)
                }
            }
            let receiver = Task { () async throws -> Int in
                for index in 0..<count {
                    guard let message = try await pair.server.nextMessage() else {
                        throw TestFailure("lane \(lane): the connection ended before message \(index) of \(count)")
                    }
                    let sequence = base + index
                    let intact = message.count == StreamMessage.size(sequence, slotSize: StressWorld.slotSize) && StreamMessage.matches(message, sequence: sequence)
                    message.release()
                    guard intact else { throw TestFailure("lane \(lane): message \(index) lost, duplicated, reordered or corrupted") }
                }
                return count
            }
            guard let received = try await value(of: receiver, within: .seconds(60)) else {
                throw TestFailure("lane \(lane): \(count) messages did not arrive within 60 s")
            }
            result.messages += received
            try await sender.value
            pair.close(clientFirst: Bool.random())
            result.generations += 1
        }
        return result
    }
}
