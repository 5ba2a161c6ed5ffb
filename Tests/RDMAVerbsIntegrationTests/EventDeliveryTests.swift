@testable import DMAIO
import Foundation
import RDMAVerbs
import Synchronization
import Testing

extension RxeIntegration {
    /// Events and messages are never lost: not when other threads drive the channel a consumer
    /// sleeps on, not when a message arrives while its connection is being associated, not when
    /// the peer closes right after its last send.
    @Suite struct EventDelivery {
        init() throws { try RxeEnvironment.requireRxeDevice() }

        /// A task in `for try await event in events` is woken for every event, also when other
        /// threads take the completions it sleeps for (a sender that pumps the channel through
        /// `receive()` between its sends).
        @Test func anAsyncConsumerWakesWhileAnotherThreadPumps() async throws {
            let pair = try ConnectedPair()
            let count = 300
            let consumer = Task { () throws -> Int in
                var sent = 0
                for try await event in pair.clientEvents {
                    if case .sent = event { sent += 1 }
                    if sent == count { break }
                }
                return sent
            }
            let receiver = OnThread { try ProposalAPI.receiveStream(pair, count: count, slotSize: 4096) }
            let sender = OnThread { () throws -> Void in
                for sequence in 0..<count {
                    let size = StreamMessage.size(sequence, slotSize: 4096)
                    while !(try ProposalAPI.trySend(pair, sequence: sequence, size: size)) { _ = try pair.client.receive() }
                    // Takes the completions (and the notification) the consumer sleeps for.
                    _ = try pair.client.receive()
                }
            }
            try sender.join()
            #expect(try receiver.join() == count)
            let sent = try await value(of: consumer, within: .seconds(30))
            #expect(sent == count, "the consumer saw \(sent.map(String.init) ?? "no end: it was never woken") of \(count) sends")
        }

        /// Many clients send their first message the moment their association returns, while the
        /// server's loop keeps polling the channel (also between `rdma_accept` and the connection
        /// being marked connected): every first message is answered.
        @Test func everyFirstMessageIsAnsweredWhileTheServerPolls() throws {
            let clients = 8
            let serverEvents = try EventChannel()
            let serverArea = try DMAArea(size: 16 << 20)
            let address = "\(RxeEnvironment.address):\(RxeEnvironment.freshPort())"
            let listener = try Listener(on: address, events: serverEvents)
            let accepted = Mutex<[Connection]>([])
            let done = Atomic<Bool>(false)
            let acceptor = OnThread { () throws -> Void in
                for _ in 0..<clients {
                    let connection = try listener.accept(timeout: .seconds(20))
                    try connection.associate(serverArea, receiveBytes: 16 * 4096, slotSize: 4096)
                    accepted.withLock { $0.append(connection) }
                }
            }
            // The server's loop: polls the channel without pause, and echoes what every accepted
            // connection received.
            let server = OnThread { () throws -> Int in
                var echoed = 0
                while !done.load(ordering: .relaxed) {
                    _ = try serverEvents.next()
                    // A client that got its answer closes: its connection is skipped from then on.
                    for connection in accepted.withLock({ $0 }) where connection.isConnected {
                        while let message = try? connection.receive() {
                            let reply = try serverArea.reserve(message.count)
                            reply.withUnsafeMutableBytes { destination in message.withUnsafeBytes { destination.copyMemory(from: $0) } }
                            message.release()
                            try connection.send(reply, cookie: 0)
                            echoed += 1
                        }
                    }
                }
                return echoed
            }
            let answered = (0..<clients).map { index in
                OnThread { () throws -> Bool in
                    let events = try EventChannel()
                    let area = try DMAArea(size: 1 << 20)
                    let connection = try Connection(to: address, events: events)
                    try connection.associate(area, receiveBytes: 8 * 4096, slotSize: 4096)
                    let request = try area.reserve(100 + index)
                    request.withUnsafeMutableBytes { StreamMessage.fill($0, sequence: index) }
                    try connection.send(request, cookie: 1)
                    let deadline = ContinuousClock.now + .seconds(15)
                    while ContinuousClock.now < deadline {
                        if let reply = try connection.receive() {
                            let matches = reply.count == 100 + index && StreamMessage.matches(reply, sequence: index)
                            reply.release()
                            return matches
                        }
                        _ = try events.wait(timeout: .milliseconds(100))
                    }
                    return false
                }
            }.map { try? $0.join() }
            done.store(true, ordering: .relaxed)
            try acceptor.join()
            let echoed = try server.join()
            #expect(answered.filter { $0 == true }.count == clients, "answers: \(answered)")
            #expect(echoed == clients)
            for connection in accepted.withLock({ $0 }) { connection.close() }
        }

        /// A peer that sends 640 messages and closes as soon as its last `.sent` arrives: every
        /// message is handed out before the disconnect is reported, over rdma_cm and over an
        /// upgraded socket. The server is busy elsewhere meanwhile, and then wakes up with the
        /// messages and the disconnect both pending, as a sleep on the channel's descriptor does
        /// when it ends late (`ec_delay`, `for try await`).
        @Test(.serialized, arguments: [ConnectedPair.Transport.connectionManager, .tcpSocket])
        func everyMessageIsHandedOutBeforeTheDisconnect(over transport: ConnectedPair.Transport) throws {
            let count = 640
            let pair = try ConnectedPair(receiveBytes: count * 256, slotSize: 256, transport: transport)
            while try pair.serverEvents.next() != nil {}
            var sent = 0
            for sequence in 0..<count {
                #expect(try ProposalAPI.trySend(pair, sequence: sequence, size: 64))
                while let event = try pair.clientEvents.next() { if case .sent = event { sent += 1 } }
            }
            while sent < count, let event = try pair.clientEvents.wait(timeout: .seconds(30)) {
                if case .sent = event { sent += 1 }
            }
            #expect(sent == count)
            pair.client.close()
            usleep(200_000)  // the disconnect reaches the server, which is busy elsewhere
            try pair.serverEvents.wokeUp(.all)  // a sleep that ended with both descriptors readable
            var received = 0, sawDisconnect = false
            while !sawDisconnect, let event = try pair.serverEvents.wait(timeout: .seconds(30)) {
                switch event {
                case .received:
                    guard let message = try pair.server.receive() else { continue }
                    guard message.count == 64, StreamMessage.matches(message, sequence: received) else {
                        throw RDMAError(.workCompletion, operation: "test", message: "message \(received) lost, reordered or corrupted")
                    }
                    message.release()
                    received += 1
                case .disconnected:
                    sawDisconnect = true
                default:
                    break
                }
            }
            #expect(sawDisconnect, "no disconnect reported within 30 s")
            #expect(received == count, "\(received) of \(count) messages were handed out before the disconnect was reported")
        }

        /// Sends `buffer`; a connection whose peer is gone drops it.
        static func sendUnlessDisconnected(_ buffer: consuming SendBuffer, on connection: Connection) throws(RDMAError) {
            do {
                try connection.send(buffer, cookie: 0)
            } catch {
                if error.code != .disconnected { throw error }
            }
        }
    }
}

/// The value of `task`, or nil when it does not finish within `limit`: the task is then
/// cancelled and left behind, so that a test whose task hangs fails instead of hanging.
func value<T: Sendable>(of task: Task<T, any Error>, within limit: Duration) async throws -> T? {
    let once = Once()
    return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T?, any Error>) in
        Task {
            let result = await task.result
            if once.take() { continuation.resume(with: result.map { Optional($0) }) }
        }
        Task {
            try? await Task.sleep(for: limit)
            if once.take() {
                task.cancel()
                continuation.resume(returning: nil)
            }
        }
    }
}

/// A flag that one caller takes.
final class Once: Sendable {
    private let taken = Atomic<Bool>(false)
    func take() -> Bool { !taken.exchange(true, ordering: .acquiringAndReleasing) }
}
