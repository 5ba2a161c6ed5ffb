import DMAIO
import Foundation
import RDMAVerbs

/// Moves stamped messages over a set of connections that share one area and one event channel:
/// sends what each flow may (its budget, its window, the area's room), takes every event, and
/// receives and checks every message that arrived. Each case drives it with ``run(until:timeout:)``.
final class Traffic {
    let events: EventChannel
    let area: DMAArea
    let size: Int
    private(set) var flows: [Flow] = []
    private var byID: [Connection.ID: Flow] = [:]

    /// One connection's traffic.
    final class Flow {
        let connection: Connection
        let stream: UInt32
        /// Messages still to send (Int.max: until stopped).
        var budget: Int
        let window: Int
        /// Whether arriving messages are taken (a stalled receiver leaves them).
        var receiving = true
        var sent = 0
        var completed = 0
        var failed = 0
        var account = SequenceAccount()
        /// When the first error of any kind (failed send or receive, disconnect) was seen.
        var firstError: ContinuousClock.Instant?
        var disconnectedAt: ContinuousClock.Instant?
        var errors: [String] = []
        var broken: Bool { firstError != nil }
        /// When the connection was interrupted (its queue pair failed) and when it resumed.
        var interruptions: [ContinuousClock.Instant] = []
        var resumptions: [ContinuousClock.Instant] = []
        /// How long each interruption that resumed lasted.
        var interruptedFor: [Duration] { zip(interruptions, resumptions).map { $1 - $0 } }

        init(connection: Connection, stream: UInt32, budget: Int, window: Int) {
            self.connection = connection
            self.stream = stream
            self.budget = budget
            self.window = window
        }

        func fail(_ what: String) {
            if firstError == nil { firstError = .now }
            if errors.count < 8 { errors.append(what) }
        }
    }

    init(events: EventChannel, area: DMAArea, size: Int) {
        self.events = events
        self.area = area
        self.size = size
    }

    @discardableResult
    func add(_ connection: Connection, stream: UInt32, budget: Int = 0, window: Int = 8) -> Flow {
        let flow = Flow(connection: connection, stream: stream, budget: budget, window: window)
        flows.append(flow)
        byID[connection.id] = flow
        return flow
    }

    func remove(_ flow: Flow) {
        flows.removeAll { $0 === flow }
        byID[flow.connection.id] = nil
    }

    /// One round; whether anything moved.
    func step() -> Bool {
        var moved = false
        for flow in flows where !flow.broken {
            while flow.budget > 0, flow.sent - flow.completed - flow.failed < flow.window {
                let buffer: SendBuffer
                do {
                    buffer = try area.reserve(size)
                } catch {
                    break  // the area is full until sends complete
                }
                buffer.withUnsafeMutableBytes { StampedMessage.fill($0, stream: flow.stream, sequence: UInt64(flow.sent)) }
                do {
                    try flow.connection.send(buffer, cookie: UInt64(flow.sent))
                } catch {
                    flow.fail("aio_send: \(error)")
                    break
                }
                flow.sent += 1
                flow.budget -= 1
                moved = true
            }
        }
        while let event = try? events.next() {
            take(event)
            moved = true
        }
        for flow in flows where flow.receiving {
            do {
                while let message = try flow.connection.receive() {
                    message.withUnsafeBytes { flow.account.take($0) }
                    message.release()
                    moved = true
                }
            } catch {
                if error.code != .disconnected && error.code != .notConnected { flow.fail("aio_recv: \(error)") }
            }
        }
        return moved
    }

    private func take(_ event: Event) {
        switch event {
        case .sent(let id, _):
            byID[id]?.completed += 1
        case .sendFailed(let id, let cookie, let status):
            byID[id]?.failed += 1
            byID[id]?.fail("send \(cookie) failed: \(status)")
        case .receiveFailed(let id, let status):
            byID[id]?.fail("receive failed: \(status)")
        case .disconnected(let id):
            if let flow = byID[id] {
                flow.disconnectedAt = flow.disconnectedAt ?? .now
                flow.fail("disconnected")
            }
        case .interrupted(let id):
            byID[id]?.interruptions.append(.now)
        case .resumed(let id):
            byID[id]?.resumptions.append(.now)
        case .received, .connected:
            break
        }
    }

    /// Steps until `done` holds; sleeps on the event channel (50 ms at most) when nothing
    /// moves. Throws after `timeout`.
    func run(until done: () -> Bool, timeout: Duration, what: String) throws {
        let deadline = ContinuousClock.now + timeout
        while !done() {
            if !step() {
                if let event = try? events.wait(timeout: .milliseconds(50)) { take(event) }
            }
            guard ContinuousClock.now < deadline else {
                throw ReliabilityError("\(what): not done within \(timeout) (\(state))")
            }
        }
    }

    /// Each flow's counters, for error messages.
    var state: String {
        flows.map { flow in
            let attributes = (try? flow.connection.queuePairAttributes())?.map { "queue pair state \($0.state.rawValue), ACK timeout \($0.ackTimeout), retries \($0.retryCount)" } ?? "no queue pair"
            let counters = flow.connection.sendCounters
            return "stream \(flow.stream): credits \(counters.credits), waiting \(counters.waiting), posted \(counters.posted), sent \(flow.sent), completed \(flow.completed), failed \(flow.failed), \(flow.account.summary), \(attributes)\(flow.errors.isEmpty ? "" : ", errors: \(flow.errors.joined(separator: "; "))")"
        }.joined(separator: " | ")
    }
}
