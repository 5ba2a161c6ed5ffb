import DMAIO
import ExampleSupport
import Foundation
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

/// Case 8: both hosts stream messages of 1 B to 64 MiB to each other at once, sizes from a
/// seeded generator, over every way to connect.
enum MixedSizes: ReliabilityCase {
    static let name = "mixed-sizes"
    static let title = "Messages of 1 B to 64 MiB, both ways, every way to connect"
    static let summary = "Both hosts send each other messages of seeded random sizes from 1 B to 64 MiB at once (the large ones by rendezvous), over rdma_cm polling and sleeping on events, over an upgraded TCP socket and through a shared receive pool; every message must arrive once, in order, every byte intact."
    static let procedure = """
        Each host has one 512 MiB area and one event channel for the whole case. Four rounds, \
        one connection each: rdma_cm with both hosts polling; rdma_cm with both hosts sleeping \
        on the event channel when nothing moves; a TCP socket upgraded by `dma_assoc` \
        (sleeping on events); rdma_cm with host 0 receiving through a shared receive pool \
        (polling). Receive slots are 4 KiB; a larger message goes by rendezvous (the receiver \
        reads it into its area). In each round each host sends \(count) messages whose sizes \
        come from a seeded generator (seed printed; TEST_MIXED_SEED changes it): exactly 1 B, \
        the slot size, the slot size + 1 and 64 MiB, the rest mostly up to a slot, some up to \
        1 MiB, a few up to 64 MiB. Each message's bytes are a function of its sequence number; \
        the receiver checks the size and every byte of each, in order. Every send must be \
        reported sent exactly once, and after each round the area must hold nothing but what \
        it held before.
        """
    /// Messages per direction per round.
    static let count = 120
    static let slotSize = 4096
    static let credits = 16
    static let largest = 64 << 20
    /// What a sender keeps in flight: messages, and bytes (so that both areas keep room to read
    /// into while both hosts send).
    static let window = 8
    static let bytesInFlight = 80 << 20

    enum Transport { case connectionManager, socket, pool }

    struct Round {
        var name: String
        var transport: Transport
        var sleeps: Bool
    }

    static let rounds = [
        Round(name: "rdma_cm, polling", transport: .connectionManager, sleeps: false),
        Round(name: "rdma_cm, sleeping on events", transport: .connectionManager, sleeps: true),
        Round(name: "upgraded TCP socket, sleeping on events", transport: .socket, sleeps: true),
        Round(name: "shared receive pool on host 0, polling", transport: .pool, sleeps: false),
    ]

    static var seed: UInt64 {
        ProcessInfo.processInfo.environment["TEST_MIXED_SEED"].flatMap { UInt64($0) } ?? 20_261_207
    }

    /// The rounds to run (TEST_MIXED_ROUNDS: indices, comma-separated; default all).
    static var chosenRounds: [Int] {
        ProcessInfo.processInfo.environment["TEST_MIXED_ROUNDS"].map { $0.split(separator: ",").compactMap { Int($0) } } ?? Array(rounds.indices)
    }

    /// What a connection's state says, for failures: its counters, its queue pair's state and
    /// why it ended.
    static func describe(_ connection: Connection) -> String {
        let counters = connection.sendCounters
        let queuePair = (try? connection.queuePairAttributes()).map { "queue pair \($0.state)" } ?? "no queue pair"
        var reason = "no error"
        do { _ = try connection.receive() } catch { reason = "\(error)" }
        return "credits \(counters.credits), \(counters.waiting) waiting, \(counters.posted) posted, \(connection.rendezvousCounters), \(queuePair), receive says: \(reason)"
    }

    static func host0(_ session: Session, _ record: inout CaseRecord) throws {
        let events = try EventChannel()
        let area = try DMAArea(size: 512 << 20)
        let listener = try Listener(on: "\(session.address):\(session.port(0, of: name))", events: events)
        let socketListener = try TCPSocket.listen(on: session.address, port: session.port(1, of: name))
        defer { close(socketListener) }
        record.figure("seed", "\(seed)")
        for index in chosenRounds {
            let round = rounds[index]
            try session.control.send("round", "\(index)")
            let before = area.bytesInUse
            // The connection (and a pool) live in this scope only: once it ends, nothing holds them.
            try {
                var socket: Int32 = -1
                var pool: SharedReceivePool?
                let connection: Connection
                switch round.transport {
                case .connectionManager:
                    connection = try Endpoints.accept(1, on: listener, area: area, receiveBytes: credits * slotSize, slotSize: slotSize)[0]
                case .socket:
                    (connection, socket) = try Endpoints.acceptSocket(
                        on: socketListener, events: events, area: area, receiveBytes: credits * slotSize, slotSize: slotSize)
                case .pool:
                    pool = try SharedReceivePool(area: area, receiveBytes: 2 * credits * slotSize, slotSize: slotSize)
                    connection = try listener.accept(timeout: .seconds(60))
                    try connection.associate(pool!, credits: credits, timeout: .seconds(30))
                }
                defer {
                    connection.close()
                    if socket >= 0 { close(socket) }
                }
                try exchange(round, on: connection, events: events, area: area, sending: sizes(seed: seed, stream: 0),
                             receiving: sizes(seed: seed, stream: 1), session: session, &record)
                _ = pool
            }()
            record.check(try areaReturns(to: before, area: area, events: events),
                         "\(round.name): after the connection closed the area holds what it held before (\(area.bytesInUse) bytes in use, \(before) before)")
        }
        try session.control.send("round", "end")
    }

    static func host1(_ session: Session, _ record: inout CaseRecord) throws {
        let events = try EventChannel()
        let area = try DMAArea(size: 512 << 20)
        while true {
            let words = try session.control.expect("round", timeout: .seconds(600))
            guard words.count == 1, let index = Int(words[0]) else { break }  // "round end"
            let round = rounds[index]
            let before = area.bytesInUse
            var socket: Int32 = -1
            let connection: Connection
            switch round.transport {
            case .connectionManager, .pool:
                connection = try Endpoints.connect(to: session.serverAddress, port: session.port(0, of: name), events: events, area: area,
                                                   receiveBytes: credits * slotSize, slotSize: slotSize)
            case .socket:
                (connection, socket) = try Endpoints.connectSocket(
                    to: session.serverAddress, port: session.port(1, of: name), events: events, area: area,
                    receiveBytes: credits * slotSize, slotSize: slotSize)
            }
            try exchange(round, on: connection, events: events, area: area, sending: sizes(seed: seed, stream: 1),
                         receiving: sizes(seed: seed, stream: 0), session: session, &record)
            connection.close()
            if socket >= 0 { close(socket) }
            record.check(try areaReturns(to: before, area: area, events: events),
                         "\(round.name): after the connection closed the area holds what it held before (\(area.bytesInUse) bytes in use, \(before) before)")
        }
    }

    /// Whether the area's use comes back to `before` within 10 s: a closed connection gives its
    /// slots back once its queue pair's last work completed (the channel takes those
    /// completions when called), a pool its slots when the last connection on it went.
    static func areaReturns(to before: Int, area: DMAArea, events: EventChannel) throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(10)
        while area.bytesInUse != before, ContinuousClock.now < deadline {
            while try events.next() != nil {}
            pause(.milliseconds(50))
        }
        return area.bytesInUse == before
    }

    /// Sends `sending` and receives `receiving` at once on `connection`, checking each message
    /// as it is handed out; then tells the other host and waits for its word, so that neither
    /// closes the connection before the other is done with it.
    static func exchange(_ round: Round, on connection: Connection, events: EventChannel, area: DMAArea, sending: [Int], receiving: [Int],
                         session: Session, _ record: inout CaseRecord) throws {
        let started = ContinuousClock.now
        let limit = ProcessInfo.processInfo.environment["TEST_MIXED_TIMEOUT"].flatMap { Int($0) } ?? 600
        let deadline = started + .seconds(limit)
        let retransmissions = HostState.counter("completer_retry_err", device: session.device)
        var next = 0, received = 0, reported = 0, inFlightBytes = 0
        var sentOnce = [Bool](repeating: false, count: sending.count)
        var twice = 0, wrongSize = 0, wrongBytes = 0, large = 0
        var firstProblem: String?
        func take(_ event: Event) throws {
            switch event {
            case .sent(_, let cookie):
                let index = Int(cookie)
                if sentOnce[index] { twice += 1 } else { sentOnce[index] = true; reported += 1; inFlightBytes -= sending[index] }
            case .sendFailed(_, let cookie, let status):
                throw ReliabilityError("\(round.name): send \(cookie) (\(sending[Int(cookie)]) bytes) failed: \(status)")
            case .receiveFailed(_, let status):
                throw ReliabilityError("\(round.name): a receive failed: \(status)")
            case .disconnected:
                dumpCounters(session)
                throw ReliabilityError("\(round.name): the connection ended after \(received) of \(receiving.count) messages received, \(reported) of \(sending.count) sent: \(describe(connection)); rxe retransmissions \(HostState.counter("completer_retry_err", device: session.device) - retransmissions)")
            case .received, .connected, .interrupted, .resumed:
                break
            }
        }
        while received < receiving.count || reported < sending.count {
            guard ContinuousClock.now < deadline else {
                dumpCounters(session)
                throw ReliabilityError("\(round.name): not done within \(limit) s: \(received) of \(receiving.count) received, \(reported) of \(sending.count) sent, \(next) queued: \(describe(connection)); rxe retransmissions \(HostState.counter("completer_retry_err", device: session.device) - retransmissions)")
            }
            var moved = false
            while next < sending.count, next - reported < window, inFlightBytes + sending[next] <= bytesInFlight {
                guard let buffer = try? area.reserve(sending[next]) else { break }  // room comes back as sends complete
                buffer.withUnsafeMutableBytes { fill($0, sequence: next) }
                try connection.send(buffer, cookie: UInt64(next))
                inFlightBytes += sending[next]
                next += 1
                moved = true
            }
            while let event = try events.next() {
                try take(event)
                moved = true
            }
            while let message = try connection.receive() {
                let expected = receiving[received]
                if message.count != expected {
                    wrongSize += 1
                    firstProblem = firstProblem ?? "message \(received): \(message.count) bytes, \(expected) sent"
                } else if !message.withUnsafeBytes({ matches($0, sequence: received) }) {
                    wrongBytes += 1
                    firstProblem = firstProblem ?? "message \(received) (\(expected) bytes): its bytes differ from what was sent"
                }
                if expected > slotSize { large += 1 }
                message.release()
                received += 1
                moved = true
            }
            if !moved, round.sleeps, let event = try events.wait(timeout: .milliseconds(100)) { try take(event) }
        }
        let seconds = (ContinuousClock.now - started).seconds
        let bytes = receiving.reduce(0, +)
        record.check(wrongSize == 0 && wrongBytes == 0,
                     "\(round.name): all \(received) messages arrived in the order sent, sizes \(receiving.min()!) B to \(receiving.max()!) B (\(large) by rendezvous), every byte checked: \(wrongSize) of the wrong size, \(wrongBytes) with wrong bytes\(firstProblem.map { " (first: \($0))" } ?? "")")
        record.check(reported == sending.count && twice == 0, "\(round.name): each of the \(sending.count) sends was reported sent once (\(twice) reported twice)")
        record.figure("\(round.name): received", String(format: "%.1f MB in %.1f s", Double(bytes) / 1e6, seconds))
        record.figure("\(round.name): rxe retransmissions (completer_retry_err)",
                      "\(HostState.counter("completer_retry_err", device: session.device) - retransmissions)")
        try session.control.send("exchanged")
        try session.control.expect("exchanged", timeout: .seconds(600))
    }

    /// Every non-zero device counter, to the log (for a failure).
    static func dumpCounters(_ session: Session) {
        let directory = "/sys/class/infiniband/\(session.device)/ports/1/hw_counters"
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
        let values = names.map { "\($0) \(HostState.counter($0, device: session.device))" }.filter { !$0.hasSuffix(" 0") }
        say("[\(name)] host \(session.host) counters: \(values.joined(separator: ", "))")
    }

    /// The sizes one host sends: 1 B, the slot size, the slot size + 1 and 64 MiB among the
    /// first four, then 7 in 10 up to a slot, 1 in 4 up to 1 MiB, 1 in 20 up to 64 MiB
    /// (log-uniform above a slot).
    static func sizes(seed: UInt64, stream: UInt64) -> [Int] {
        var generator = SplitMix64(seed: seed &+ stream &* 0x9E37_79B9_7F4A_7C15)
        var sizes = [1, slotSize, slotSize + 1, largest]
        while sizes.count < count {
            let pick = generator.next() % 20
            if pick < 14 {
                sizes.append(1 + Int(generator.next() % UInt64(slotSize)))
            } else {
                let top = pick < 19 ? 1 << 20 : largest
                let exponent = Double(generator.next() % 1_000_000) / 1_000_000 * log2(Double(top) / Double(slotSize + 1))
                sizes.append(min(top, Int(Double(slotSize + 1) * exp2(exponent))))
            }
        }
        // The fixed sizes move to seeded places among the others.
        for index in 0..<4 { sizes.swapAt(index, Int(generator.next() % UInt64(count))) }
        return sizes
    }

    /// Message `sequence`'s bytes: 64-bit words of a sequence-seeded generator, the last ones cut
    /// to the message's length.
    static func fill(_ buffer: UnsafeMutableRawBufferPointer, sequence: Int) {
        var generator = SplitMix64(seed: UInt64(sequence))
        var offset = 0
        while offset + 8 <= buffer.count {
            buffer.storeBytes(of: generator.next(), toByteOffset: offset, as: UInt64.self)
            offset += 8
        }
        var last = generator.next()
        while offset < buffer.count {
            buffer[offset] = UInt8(truncatingIfNeeded: last)
            last >>= 8
            offset += 1
        }
    }

    static func matches(_ bytes: UnsafeRawBufferPointer, sequence: Int) -> Bool {
        var generator = SplitMix64(seed: UInt64(sequence))
        var offset = 0
        while offset + 8 <= bytes.count {
            if bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self) != generator.next() { return false }
            offset += 8
        }
        var last = generator.next()
        while offset < bytes.count {
            if bytes[offset] != UInt8(truncatingIfNeeded: last) { return false }
            last >>= 8
            offset += 1
        }
        return true
    }
}
