import DMAIO
import ExampleSupport
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

/// One side of the ping-pong on the proposal's API: an event channel, an area, and the loop
/// that reserves, sends, receives and releases — zero-copy, no allocation per message.
struct Session {
    let events: EventChannel
    let area: DMAArea
    /// The receive slot size: the message size rounded up to a power of two.
    let slotSize: Int
    let size: Int
    let useEvents: Bool
    let check: Bool
    let pattern: Pattern
    /// Sends posted and not yet completed.
    let outstanding = Counter()

    final class Counter {
        var value = 0
    }

    init(size: Int, device: String?, events useEvents: Bool, check: Bool) throws(RDMAError) {
        self.size = size
        self.useEvents = useEvents
        self.check = check
        slotSize = ExampleSupport.slotSize(for: size)
        events = try EventChannel(capacity: 64, device: device)
        // Receive slots (credits) and their credit-update room in one block, and two send
        // buffers in flight (at least the area's smallest block each).
        area = try DMAArea(size: max(2 * Self.credits * slotSize + 2 * max(slotSize, DMAArea.minimumBlock), 1 << 16), device: device)
        pattern = Pattern(size: size)
    }

    /// Receive slots granted to the peer: enough that credits ride on the replies.
    static let credits = 8

    struct Result {
        var seconds: Double
        var percentiles: Percentiles
    }

    struct Percentiles {
        var min = 0.0, p50 = 0.0, p99 = 0.0, p999 = 0.0, max = 0.0
    }

    /// Runs `iterations` round trips; the client sends first.
    func run(_ connection: Connection, iterations: Int, isClient: Bool) throws(RDMAError) -> Result {
        var roundTrips = [Double](repeating: 0, count: iterations)
        let clock = ContinuousClock()
        let start = clock.now
        var last = start
        for iteration in 0..<iterations {
            if isClient {
                try send(on: connection, sequence: iteration)
                try receive(on: connection, sequence: iteration)
            } else {
                try receive(on: connection, sequence: iteration)
                try send(on: connection, sequence: iteration)
            }
            let now = clock.now
            roundTrips[iteration] = Self.microseconds(now - last)
            last = now
        }
        let seconds = Self.microseconds(clock.now - start) / 1e6
        // The last message must have left before the caller closes the connection: a close
        // flushes sends still in flight, and the peer would wait for that message in vain.
        while outstanding.value > 0 { try waitForEvent(blocking: true) }
        roundTrips.sort()
        func at(_ fraction: Double) -> Double { roundTrips[min(roundTrips.count - 1, Int(Double(roundTrips.count) * fraction))] }
        return Result(
            seconds: seconds,
            percentiles: Percentiles(min: roundTrips[0], p50: at(0.5), p99: at(0.99), p999: at(0.999), max: roundTrips[roundTrips.count - 1]))
    }

    private static func microseconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) * 1e6 + Double(duration.components.attoseconds) / 1e12
    }

    /// sio_reserve, fill, aio_send; the buffer comes back by itself when the send completes.
    private func send(on connection: Connection, sequence: Int) throws(RDMAError) {
        while true {
            do {
                let buffer = try area.reserve(size)
                if check { buffer.withUnsafeMutableBytes { pattern.fill($0, sequence: UInt64(sequence)) } }
                try connection.send(buffer, cookie: UInt64(sequence))
                outstanding.value += 1
                return
            } catch {
                // The previous send's buffer is not back yet: take its completion.
                guard error.code == .areaExhausted else { throw error }
                try waitForEvent()
            }
        }
    }

    /// aio_recv, check, sio_release.
    private func receive(on connection: Connection, sequence: Int) throws(RDMAError) {
        while true {
            if let message = try connection.receive() {
                guard message.count == size else {
                    throw RDMAError(.invalidArgument, operation: "aio_recv",
                                    message: "received \(message.count) bytes, expected \(size): do both sides use the same -s?")
                }
                if check, !pattern.matches(message.bytes, sequence: UInt64(sequence)) {
                    throw RDMAError(.workCompletion, operation: "pingpong -c", message: "message \(sequence) differs from what was sent")
                }
                message.release()
                return
            }
            try waitForEvent()
        }
    }

    /// Takes one event: polling (ec_next_event) or sleeping on the channel (ec_delay).
    private func waitForEvent(blocking: Bool = false) throws(RDMAError) {
        let sleeps = useEvents || blocking
        let event = sleeps ? try events.wait(timeout: .seconds(30)) : try events.next()
        switch event {
        case .sent?:
            outstanding.value -= 1
        case .disconnected?:
            throw RDMAError(.disconnected, operation: "pingpong", message: "the peer went away")
        case .sendFailed(_, _, let status)?:
            throw RDMAError(.workCompletion, operation: "aio_send", message: "a send failed: \(status)")
        case nil where sleeps:
            throw RDMAError(.timedOut, operation: "ec_delay", message: "no event within 30 s: did the peer stop?")
        default:
            break
        }
    }
}
