import DMAIO
import ExampleSupport
import RDMAVerbs

/// The stream over the proposal's API: the sender reserves, fills and sends buffers of its
/// area; the receiver takes each message where the device wrote it (or, for a message larger
/// than its slots, where it read it) and releases it.
struct RDMATransport {
    let events: EventChannel
    let area: DMAArea
    let size: Int
    let slotSize: Int
    let window: Int
    let useEvents: Bool
    let pattern: Pattern?
    let interruptions = InterruptionLog(tool: "stream")

    /// Large messages in flight are bounded by this many bytes of each side's area.
    static let largeBytesInFlight = 64 << 20

    init(size: Int, slotSize requestedSlotSize: Int, window: Int, device: String?, useEvents: Bool, pattern: Pattern?) throws(RDMAError) {
        self.size = size
        self.window = window
        self.useEvents = useEvents
        self.pattern = pattern
        slotSize = ExampleSupport.slotSize(for: min(size, requestedSlotSize))
        events = try EventChannel(capacity: max(256, 8 * window), device: device)
        // Each side: `window` receive slots and as many for credit updates, side by side in one
        // block (a power of two), plus room for messages.
        let slotBlock = ExampleSupport.slotSize(for: 2 * window * slotSize)
        if size <= slotSize {
            // Send buffers (at least the area's smallest block each): `window` in flight and as
            // many queued.
            area = try DMAArea(size: max(slotBlock + 2 * window * max(slotSize, DMAArea.minimumBlock), 1 << 16), device: device)
        } else {
            // Rendezvous: the sender's buffers stay lent until the receiver has read them, and
            // the receiver reads into blocks of its area, at most half of it (the library's
            // default): the sender has up to `inFlight` blocks out, the receiver half as many.
            let block = ExampleSupport.slotSize(for: size)
            let inFlight = max(2, min(window, Self.largeBytesInFlight / block))
            area = try DMAArea(size: slotBlock + inFlight * block, device: device)
        }
    }

    func send(to host: String, from source: String?, port: UInt16, limit: Limit, meter: Meter) throws(RDMAError) {
        let connection = try Connection(to: "\(host.contains(":") ? "[\(host)]" : host):\(port)", from: source, events: events)
        try connection.associate(area, receiveBytes: window * slotSize, slotSize: slotSize)
        let clock = ContinuousClock()
        var deadline: ContinuousClock.Instant? = nil
        var sent = 0, completed = 0
        while true {
            if case .messages(let count) = limit, sent == count { break }
            if case .seconds(let seconds) = limit {
                if deadline == nil { deadline = clock.now + .seconds(seconds) }
                if sent & 63 == 0, clock.now >= deadline! { break }
            }
            let buffer: SendBuffer
            do {
                buffer = try area.reserve(size)
            } catch {
                guard error.code == .areaExhausted else { throw error }
                completed += try takeEvent(blocking: useEvents)
                continue
            }
            if let pattern { buffer.withUnsafeMutableBytes { pattern.fill($0, sequence: UInt64(sent)) } }
            try connection.send(buffer, cookie: UInt64(sent))
            sent += 1
            meter.count()
            // Completions are handled (their buffers back in the area) whenever the library
            // looks at the completion queue, in send among others; their events are taken every
            // 16th message, and when the area is full, rather than after every message (each
            // look that finds none is a poll of the queue).
            if sent & 15 == 0 {
                while let event = try events.next() { completed += try account(event, from: "ec_next_event") }
            }
        }
        while completed < sent { completed += try takeEvent(blocking: true) }
        // The clock stops at the last completion, as perftest's does; tearing the connection
        // down is not part of the transfer.
        meter.finish()
        connection.close()
    }

    func receive(on address: String, port: UInt16, meter: Meter, announce: (String) -> Void) throws(RDMAError) {
        let listener = try Listener(on: "\(address):\(port)", events: events, backlog: 1)
        announce("  listening on \(address):\(port)")
        let connection = try listener.accept(timeout: nil)
        try connection.associate(area, receiveBytes: window * slotSize, slotSize: slotSize)
        announce("  accepted a sender over \(events.deviceName)")
        var sequence: UInt64 = 0
        while true {
            let message: ReceivedBuffer?
            do {
                message = try connection.receive()
            } catch {
                if error.code == .disconnected { return }  // the sender is done
                throw error
            }
            guard let message else {
                _ = try useEvents ? events.wait(timeout: .seconds(30)) : events.next()
                continue
            }
            guard message.count == size else {
                throw RDMAError(.invalidArgument, operation: "aio_recv", message: "received \(message.count) bytes, expected \(size): do both sides use the same -s?")
            }
            if let pattern, !message.withUnsafeBytes({ pattern.matches($0, sequence: sequence) }) {
                throw RDMAError(.workCompletion, operation: "stream --verify", message: "message \(sequence) differs from what was sent")
            }
            message.release()
            sequence += 1
            meter.count()
        }
    }

    /// Takes one event (sleeping on the channel when `blocking`); returns completed sends.
    private func takeEvent(blocking: Bool) throws(RDMAError) -> Int {
        guard let event = blocking ? try events.wait(timeout: .seconds(30)) : try events.next() else {
            if blocking { throw RDMAError(.timedOut, operation: "ec_delay", message: "no event within 30 s: did the receiver stop?") }
            return 0
        }
        return try account(event, from: blocking ? "ec_delay" : "ec_next_event")
    }

    private func account(_ event: Event, from operation: String) throws(RDMAError) -> Int {
        switch event {
        case .sent: return 1
        case .sendFailed(_, let cookie, let status):
            throw RDMAError(.workCompletion, operation: "aio_send", message: "message \(cookie) failed: \(status)")
        case .disconnected:
            throw RDMAError(.disconnected, operation: operation, errno: .connectionReset, message: "the receiver disconnected (the event channel reported it): is it still running?")
        case .interrupted:
            interruptions.interrupted()
            return 0
        case .resumed:
            interruptions.resumed()
            return 0
        default: return 0
        }
    }
}
