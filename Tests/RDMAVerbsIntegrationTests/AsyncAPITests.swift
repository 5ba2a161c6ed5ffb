@testable import DMAIO
import Foundation
import RDMAVerbs
import Synchronization
import Testing

extension RxeIntegration {
    /// The API for tasks: accepting, connecting, associating, receiving and sending suspend the
    /// task, never a thread; cancellation ends a wait at once; dead peers are noticed without the
    /// program calling in.
    @Suite struct AsyncAPI {
        init() throws { try RxeEnvironment.requireRxeDevice() }

        /// An echo server in tasks — one per connection on one event channel — serves 16 clients
        /// at once, each in a task of its own on another shared channel; every byte is checked.
        @Test func anAsyncServerServesSixteenClientsAtOnce() async throws {
            let clients = 16, requests = 40, slotSize = 16 << 10
            let address = "\(RxeEnvironment.address):\(RxeEnvironment.freshPort())"
            let serverEvents = try EventChannel(), clientEvents = try EventChannel()
            let serverArea = try DMAArea(size: 32 << 20), clientArea = try DMAArea(size: 32 << 20)
            let listener = try Listener(on: address, events: serverEvents)
            let server = Task {
                try await withThrowingDiscardingTaskGroup { group in
                    var accepted = 0
                    for try await connection in listener.connections {
                        group.addTask {
                            defer { connection.close() }
                            try await connection.associate(serverArea, receiveBytes: 8 * slotSize, slotSize: slotSize)
                            while let request = try await connection.nextMessage() {
                                let reply = try serverArea.reserve(request.count)
                                reply.withUnsafeMutableBytes { reply in request.withUnsafeBytes { reply.copyMemory(from: $0) } }
                                request.release()
                                try await connection.send(reply)
                            }
                        }
                        accepted += 1
                        if accepted == clients { break }
                    }
                }
            }
            let echoed: Int
            do { echoed = try await withThrowingTaskGroup(of: Int.self) { group in
                for index in 0..<clients {
                    group.addTask {
                        let connection = try await Connection.connect(to: address, events: clientEvents)
                        defer { connection.close() }
                        try await connection.associate(clientArea, receiveBytes: 8 * slotSize, slotSize: slotSize)
                        for round in 0..<requests {
                            let sequence = index * requests + round
                            let size = StreamMessage.size(sequence, slotSize: slotSize)
                            let request = try clientArea.reserve(size)
                            request.withUnsafeMutableBytes { StreamMessage.fill($0, sequence: sequence) }
                            try await connection.send(request)
                            guard let reply = try await connection.nextMessage() else { throw TestFailure("client \(index): the server closed") }
                            let intact = reply.count == size && StreamMessage.matches(reply, sequence: sequence)
                            reply.release()
                            guard intact else { throw TestFailure("client \(index): echo \(round) lost, reordered or corrupted") }
                        }
                        return requests
                    }
                }
                return try await group.reduce(0, +)
            } } catch {
                server.cancel()
                if case .failure(let serverError) = await server.result { Issue.record("the server failed: \(serverError)") }
                throw error
            }
            #expect(echoed == clients * requests)
            try await server.value
        }

        /// Each kind of wait ends promptly when its task is cancelled — for a message, for an
        /// event, for a connection request, for a credit — and the connection stays usable.
        @Test func cancellingAWaitingTaskEndsItPromptly() async throws {
            let pair = try ConnectedPair(receiveBytes: 4 * 4096, slotSize: 4096)
            let listener = try Listener(on: "\(RxeEnvironment.address):\(RxeEnvironment.freshPort())", events: pair.serverEvents)
            // Out of credits: the client sends its whole grant, the server releases nothing.
            for sequence in 0..<4 { #expect(try ProposalAPI.trySend(pair, sequence: sequence, size: 64)) }
            var held = 0
            while held < 4 {
                if try pair.server.receiveRetained() != nil { held += 1 } else { _ = try pair.serverEvents.wait(timeout: .seconds(5)) }
            }
            while try pair.clientEvents.next() != nil {}
            let waits: [(String, @Sendable () async throws -> Void)] = [
                ("a message", { if let message = try await pair.client.nextMessage() { message.release() } }),
                ("an event", { for try await _ in pair.clientEvents {} }),
                ("a connection request", { _ = try await listener.accept() }),
                ("a credit", { try await pair.client.send(try pair.clientArea.reserve(64)) }),
            ]
            var delays: [Duration] = []
            for (what, wait) in waits {
                let task = Task { try await wait() }
                try await Task.sleep(for: .milliseconds(200))
                let cancelled = ContinuousClock.now
                task.cancel()
                let outcome = await task.result
                let delay = ContinuousClock.now - cancelled
                delays.append(delay)
                print("async: a task waiting for \(what) ended \(delay) after its cancel")
                guard case .failure(let error) = outcome else {
                    Issue.record("the wait for \(what) ended without an error")
                    continue
                }
                #expect(error is CancellationError, "the wait for \(what) ended with \(error)")
                #expect(delay < .seconds(1), "the wait for \(what) ended \(delay) after its cancel")
            }
            #expect(delays.sorted()[delays.count / 2] < .milliseconds(100), "delays: \(delays)")
            #expect(pair.client.sendCounters.waiting == 0, "a cancelled send stayed queued")
            // The connection goes on: the held messages go back and a message goes through.
            try pair.serverArea.releaseOldest(bytes: 4 * 64)
            #expect(try ProposalAPI.trySend(pair, sequence: 4, size: 100))
            let message = try await value(of: Task { () async throws -> Int in
                guard let message = try await pair.server.nextMessage() else { return -1 }
                let intact = message.count == 100 && StreamMessage.matches(message, sequence: 4)
                message.release()
                return intact ? 4 : -2
            }, within: .seconds(10))
            #expect(message == 4, "the connection did not carry a message after the cancels")
        }

        /// A peer that goes silent (its queue pair drops every packet without an answer, as a
        /// dead host would, and it never answers the resume), while the only consumer is a
        /// `for try await` loop that never calls anything else: the loop gets the interruption
        /// within the documented bound (two keepalive intervals and the retries: about 6 s), and
        /// the disconnect once the resume deadline passed (1 s here, and at most one keepalive
        /// sweep more).
        @Test func aSilentPeerEndsTheAsyncLoopInTime() async throws {
            let pair = try ConnectedPair(transport: .tcpSocket)  // no rdma_cm: nothing but silence
            while try pair.clientEvents.next() != nil {}
            pair.client.resumeDeadline = .seconds(1)
            pair.server.stopWatchingSocketForTesting()
            try #require(pair.server.queuePair != nil)
            try pair.server.queuePair!.moveToError()
            let start = ContinuousClock.now
            let loop = Task { () throws -> (interrupted: Duration?, disconnected: Duration)? in
                var interrupted: Duration?
                for try await event in pair.clientEvents {
                    if case .interrupted = event { interrupted = ContinuousClock.now - start }
                    if case .disconnected = event { return (interrupted, ContinuousClock.now - start) }
                }
                return nil
            }
            let elapsed = try await value(of: loop, within: .seconds(20)) ?? nil
            let seen = try #require(elapsed, "the loop saw no disconnect within 20 s of the peer going silent")
            print("async: a silent peer was reported to the for-await loop: interrupted after \(seen.interrupted.map(String.init(describing:)) ?? "never"), disconnected after \(seen.disconnected)")
            let interrupted = try #require(seen.interrupted, "no interruption before the disconnect")
            #expect(interrupted < .seconds(8), "the silent peer was noticed after \(interrupted)")
            #expect(seen.disconnected - interrupted < .seconds(1) + PeerTimeout.keepAliveInterval + .seconds(1))
        }

        /// Peers that send a connect request and never finish connecting do not hold up an
        /// honest client: the server serves each connection in a task of its own, and the
        /// honest client is connected while the three others still hang.
        @Test func incompleteConnectRequestsDoNotDelayAnHonestClient() async throws {
            let address = "\(RxeEnvironment.address):\(RxeEnvironment.freshPort())"
            let serverEvents = try EventChannel(), clientEvents = try EventChannel()
            let serverArea = try DMAArea(size: 8 << 20), clientArea = try DMAArea(size: 4 << 20)
            let listener = try Listener(on: address, events: serverEvents)
            let hanging = Counter()
            let server = Task {
                try await withThrowingDiscardingTaskGroup { group in
                    for try await connection in listener.connections {
                        group.addTask {
                            // Pending associations: the half-open peers' stay pending.
                            hanging.value.add(1, ordering: .relaxed)
                            let associated: Void? = try? await connection.associate(serverArea, receiveBytes: 8 * 4096, slotSize: 4096, timeout: .seconds(20))
                            hanging.value.subtract(1, ordering: .relaxed)
                            if associated != nil {
                                while let message = try? await connection.nextMessage() { message.release() }
                            }
                            connection.close()
                        }
                    }
                }
            }
            /// Connects and associates an honest client; how long that took.
            func honestConnection() async throws -> Duration {
                let start = ContinuousClock.now
                let connection = try await Connection.connect(to: address, events: clientEvents)
                try await connection.associate(clientArea, receiveBytes: 8 * 4096, slotSize: 4096)
                let took = ContinuousClock.now - start
                connection.close()
                return took
            }
            var baseline: [Duration] = []
            for _ in 0..<3 { baseline.append(try await honestConnection()) }
            // Three peers send a valid request and never answer the accept (no queue pair, no
            // RTU): rdma_cm keeps them half-open.
            let hostile = try (0..<3).map { try HalfOpenPeer(connectingTo: address, announcing: 0x1000 + UInt32($0)) }
            let deadline = ContinuousClock.now + .seconds(10)
            while hanging.value.load(ordering: .relaxed) < 3, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
            #expect(hanging.value.load(ordering: .relaxed) == 3, "the server did not take the three requests")
            var during: [Duration] = []
            for _ in 0..<3 { during.append(try await honestConnection()) }
            let stillHanging = hanging.value.load(ordering: .relaxed)
            let typical = baseline.sorted()[1], delayed = during.sorted()[1]
            print("async: an honest client connected in \(delayed) with three half-open peers pending (\(typical) before them)")
            // At least 3: the last honest connection's server task may still be finishing its
            // association (the client's side can be established first).
            #expect(stillHanging >= 3, "the half-open peers were no longer pending: the honest connections did not overlap them")
            #expect(delayed < typical + .seconds(1), "with three half-open peers pending the honest client took \(delayed), against \(typical)")
            withExtendedLifetime(hostile) {}
            server.cancel()
        }
    }
}

/// A peer that sends a valid DMAIO connect request and then never completes the connection: an
/// rdma_cm id without a queue pair, which leaves the server's accept unanswered (rdma_cm waits
/// for it to establish).
struct HalfOpenPeer {
    let id: ConnectionID

    /// Sends the request, announcing a queue pair `number` that does not exist (each peer its
    /// own: the connection manager refuses a second request from the same queue pair), and a
    /// grant of `credits`.
    init(connectingTo address: String, announcing number: UInt32, credits: UInt32 = 8) throws {
        id = try ConnectionID(channel: try ConnectionEventChannel())
        try id.resolve(to: try SocketAddress(parsing: address), timeout: .seconds(5))
        let hello = WireProtocol.Hello(credits: credits, room: 8, slotSize: 4096, largestMessage: 4096)
        try id.startConnecting(ConnectionParameters(
            privateData: hello.bytes, responderResources: 0, initiatorDepth: 0, retryCount: 6, queuePairNumber: number))
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A count that tasks share.
final class Counter: Sendable {
    let value = Atomic<Int>(0)
}
