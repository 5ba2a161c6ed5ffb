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
    /// Whether round trips go through bare verbs calls instead of the library, and which.
    let bareVerbs: Baseline
    let pattern: Pattern
    /// Sends posted and not yet completed.
    let outstanding = Counter()
    let interruptions = InterruptionLog(tool: "pingpong")

    final class Counter {
        var value = 0
    }

    /// Round trips made with bare verbs calls on the connection the library made
    /// (``VerbsBaseline``), instead of through the library.
    enum Baseline {
        /// None: every round trip goes through the library.
        case none
        /// Blocks of ``Session/comparisonBlock`` alternate between the library and bare verbs
        /// calls (`--against-verbs`).
        case alternating
        /// Every round trip (`--verbs-only`).
        case only
    }

    init(size: Int, device: String?, events useEvents: Bool, check: Bool, baseline: Baseline = .none) throws(RDMAError) {
        self.size = size
        self.useEvents = useEvents
        self.check = check
        bareVerbs = baseline
        slotSize = ExampleSupport.slotSize(for: size)
        credits = Self.credits(slotSize: slotSize)
        // Room for the connection's receives, credit updates and sends (what dma_assoc claims).
        events = try EventChannel(capacity: 4 * credits + 16, device: device)
        // Receive slots (credits) and their credit-update room in one block, and two send
        // buffers in flight (at least the area's smallest block each); a third for the verbs
        // baseline, which keeps one for its own sends.
        let sendBuffers = bareVerbs == .none ? 2 : 3
        area = try DMAArea(size: max(2 * credits * slotSize + sendBuffers * max(slotSize, DMAArea.minimumBlock), 1 << 16), device: device)
        pattern = Pattern(size: size)
    }

    /// Receive slots granted to the peer.
    let credits: Int

    /// Receive slots to grant: enough that credits ride on the replies, and for messages up to
    /// 4 KiB enough that released slots are re-posted 16 at a time (the library gathers a
    /// quarter of the grant), as `ibv_rc_pingpong` re-posts its receives in bulk; 8 for larger
    /// messages, which keeps the area small.
    static func credits(slotSize: Int) -> Int { slotSize <= 4096 ? 64 : 8 }

    struct Result {
        var seconds: Double
        var percentiles: Percentiles
        /// With `--against-verbs`: the library's round trips against the baseline's.
        var againstVerbs: VerbsComparison?
        /// Round trips made with bare verbs calls (`--against-verbs`, `--verbs-only`).
        var bareVerbsRoundTrips: Int
    }

    /// Round trips alternate in blocks of this many between the library and the verbs baseline.
    static let comparisonBlock = 64

    struct Percentiles {
        var min = 0.0, p50 = 0.0, p99 = 0.0, p999 = 0.0, max = 0.0
    }

    /// Runs `iterations` round trips; the client sends first.
    ///
    /// Only taking the arrival and posting the answer lie between a message's arrival and the
    /// reply; what the next round trip needs is done while the current message is in flight: the
    /// next send buffer is reserved (and filled), the received message released (its slot
    /// re-posted, its credit owed) after the reply went out, as `ibv_rc_pingpong` re-posts its
    /// receives off that path. The loop stamps each round trip into a buffer allocated before it
    /// (a clock read, no arithmetic, no allocation), and not between an arrival and the reply:
    /// the client stamps when a request's post returned, so that a round trip is the period from
    /// one post to the next (its clock starts after the first post, as `ibv_rc_pingpong`'s
    /// does, and stops when the last reply is taken); the server stamps after each reply's post.
    /// Durations and percentiles are worked out after the last round trip.
    func run(_ connection: Connection, iterations: Int, isClient: Bool) throws(RDMAError) -> Result {
        let stamps = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: iterations + 1)
        defer { stamps.deallocate() }
        stamps.initialize(repeating: 0)
        let mode = bareVerbs
        // The first library send's buffer (none when every round trip goes through bare verbs).
        var next: SendBuffer? = mode == .only ? nil : try reserve(sequence: 0)
        var reply: ReceivedBuffer? = nil
        var bareVerbsRoundTrips = 0
        let baseline = mode == .none ? nil : try VerbsBaseline(connection, messageSize: size)
        /// Whether round trip `n` goes through the verbs baseline: every other block, or all.
        func viaVerbs(_ n: Int) -> Bool {
            switch mode {
            case .none: false
            case .alternating: n < iterations && (n / Self.comparisonBlock) & 1 == 1
            case .only: n < iterations
            }
        }
        if !isClient { stamps[0] = MonotonicClock.nanoseconds() }
        for iteration in 0..<iterations {
            let last = iteration == iterations - 1
            if let baseline, viaVerbs(iteration) {
                if isClient {
                    try baseline.send()
                    stamps[iteration] = MonotonicClock.nanoseconds()
                    _ = try baseline.receive()
                    if last { stamps[iterations] = MonotonicClock.nanoseconds() }
                } else {
                    _ = try baseline.receive()
                    try baseline.send()
                    stamps[iteration + 1] = MonotonicClock.nanoseconds()
                }
                if !viaVerbs(iteration + 1) { try baseline.settle() }
                bareVerbsRoundTrips += 1
                continue
            }
            // Before the baseline takes over, no events are taken after this side's last send
            // through the library: that could take the peer's first baseline message.
            let switching = viaVerbs(iteration + 1)
            if isClient {
                try send(next.take()!, on: connection, sequence: iteration)
                stamps[iteration] = MonotonicClock.nanoseconds()
                if iteration & 15 == 15 { try takeEvents() }
                reply.take()?.release()
                if !last { next = try reserve(sequence: iteration + 1) }
                reply = try receive(on: connection, sequence: iteration)
                if switching { reply.take()?.release() }
                if last { stamps[iterations] = MonotonicClock.nanoseconds() }
            } else {
                let request = try receive(on: connection, sequence: iteration)
                try send(next.take()!, on: connection, sequence: iteration)
                stamps[iteration + 1] = MonotonicClock.nanoseconds()
                if iteration & 15 == 15 && !switching { try takeEvents() }
                request.release()
                if !last { next = try reserve(sequence: iteration + 1) }
            }
        }
        reply.take()?.release()
        // The last message must have left before the caller closes the connection: a close
        // flushes sends still in flight, and the peer would wait for that message in vain.
        while outstanding.value > 0 { try waitForEvent(blocking: true) }
        let seconds = Double(stamps[iterations] - stamps[0]) / 1e9
        var roundTrips = (0..<iterations).map { Double(stamps[$0 + 1] - stamps[$0]) / 1e3 }
        let comparison = mode != .alternating ? nil : VerbsComparison(roundTrips: roundTrips, block: Self.comparisonBlock)
        roundTrips.sort()
        func at(_ fraction: Double) -> Double { roundTrips[min(roundTrips.count - 1, Int(Double(roundTrips.count) * fraction))] }
        return Result(
            seconds: seconds,
            percentiles: Percentiles(min: roundTrips[0], p50: at(0.5), p99: at(0.99), p999: at(0.999), max: roundTrips[roundTrips.count - 1]),
            againstVerbs: comparison, bareVerbsRoundTrips: bareVerbsRoundTrips)
    }

    /// sio_reserve and fill; when the area is full (the previous send's buffer is not back
    /// yet), takes events until it is.
    private func reserve(sequence: Int) throws(RDMAError) -> SendBuffer {
        while true {
            do {
                let buffer = try area.reserve(size)
                if check { buffer.withUnsafeMutableBytes { pattern.fill($0, sequence: UInt64(sequence)) } }
                return buffer
            } catch {
                guard error.code == .areaExhausted else { throw error }
                try waitForEvent()
            }
        }
    }

    /// aio_send; the buffer comes back by itself when the send completes.
    private func send(_ buffer: consuming SendBuffer, on connection: Connection, sequence: Int) throws(RDMAError) {
        try connection.send(buffer, cookie: UInt64(sequence))
        outstanding.value += 1
    }

    /// Waits for the next message and checks it; the caller releases it (sio_release). Polling,
    /// it asks aio_recv again and again: when nothing has arrived, aio_recv looks at the
    /// completion queue itself, so an arrival is taken and handed out in one call, with nothing
    /// else between the completion and the reply. With -e it sleeps on the channel (ec_delay)
    /// between asks, until an event announces a message.
    private func receive(on connection: Connection, sequence: Int) throws(RDMAError) -> ReceivedBuffer {
        while true {
            if let message = try connection.receive() {
                guard message.count == size else {
                    throw RDMAError(.invalidArgument, operation: "aio_recv",
                                    message: "received \(message.count) bytes, expected \(size): do both sides use the same -s?")
                }
                if check, !message.withUnsafeBytes({ pattern.matches($0, sequence: UInt64(sequence)) }) {
                    throw RDMAError(.workCompletion, operation: "pingpong -c", message: "message \(sequence) differs from what was sent")
                }
                return message
            }
            if useEvents { while try !waitForEvent() {} }
        }
    }

    /// Takes the events that are waiting (ec_next_event until none is left), off the critical
    /// path and every 16th round trip, which keeps the channel's event queue within its first
    /// capacity: sends completed (their buffers came back to the area by themselves), and
    /// announcements of messages, which ``receive(on:sequence:)`` takes by itself.
    private func takeEvents() throws(RDMAError) {
        while let event = try events.next() { _ = try take(event, from: "ec_next_event") }
    }

    /// Waits for one event: polling (ec_next_event) until there is one, or sleeping on the
    /// channel (ec_delay) with -e or when `blocking`; true when it announced a received message.
    /// A peer that vanished shows as a disconnect (the channel's keepalive finds it within
    /// seconds), so neither waits forever.
    @discardableResult
    private func waitForEvent(blocking: Bool = false) throws(RDMAError) -> Bool {
        let sleeps = useEvents || blocking
        while true {
            if let event = sleeps ? try events.wait(timeout: .seconds(30)) : try events.next() {
                return try take(event, from: sleeps ? "ec_delay" : "ec_next_event")
            }
            if sleeps { throw RDMAError(.timedOut, operation: "ec_delay", message: "no event within 30 s: did the peer stop?") }
        }
    }

    /// One event, taken by `operation`: a completed send is counted, a failure thrown; true when
    /// it announced a received message.
    private func take(_ event: Event, from operation: String) throws(RDMAError) -> Bool {
        switch event {
        case .received:
            return true
        case .sent:
            outstanding.value -= 1
            return false
        case .connected:
            return false
        case .interrupted:
            interruptions.interrupted()
            return false
        case .resumed:
            interruptions.resumed()
            return false
        case .disconnected:
            throw RDMAError(.disconnected, operation: operation, errno: .connectionReset, message: "the peer disconnected (the event channel reported it): is the other side still running?")
        case .sendFailed(_, _, let status):
            throw RDMAError(.workCompletion, operation: "aio_send", message: "a send failed: \(status)")
        case .receiveFailed(_, let status):
            throw RDMAError(.workCompletion, operation: "aio_recv", message: "a receive failed: \(status)")
        }
    }
}
