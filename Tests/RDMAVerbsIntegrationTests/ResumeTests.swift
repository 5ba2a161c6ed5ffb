@testable import DMAIO
import Foundation
import RDMAVerbs
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension RxeIntegration {
    /// A connection whose queue pair fails — the peer stopped answering, the link went down —
    /// resumes on a new one: every message arrives once, in order, intact, and every send is
    /// reported sent once (docs/resume.md).
    @Suite struct Resume {
        init() throws { try RxeEnvironment.requireRxeDevice() }

        /// One end of a stream both ways: what it sent, what it received, what it was told.
        final class End {
            let connection: Connection
            let area: DMAArea
            let events: EventChannel
            let name: String
            var next = 0, completed = 0, received = 0, interrupted = 0, resumed = 0
            var reported: [Bool]
            var problems: [String] = []

            init(_ name: String, _ connection: Connection, _ area: DMAArea, _ events: EventChannel, total: Int) {
                self.name = name
                self.connection = connection
                self.area = area
                self.events = events
                reported = [Bool](repeating: false, count: total)
            }

            /// Sends what the window and the area allow, takes the events and the messages;
            /// whether anything moved.
            func step(total: Int, window: Int, slotSize: Int) throws -> Bool {
                var moved = false
                while next < total, next - completed < window {
                    guard let buffer = try? area.reserve(StreamMessage.size(next, slotSize: slotSize)) else { break }
                    buffer.withUnsafeMutableBytes { StreamMessage.fill($0, sequence: next) }
                    try connection.send(buffer, cookie: UInt64(next))
                    next += 1
                    moved = true
                }
                while let event = try events.next() {
                    moved = true
                    switch event {
                    case .sent(_, let cookie):
                        if reported[Int(cookie)] { problems.append("\(name): send \(cookie) reported twice") }
                        reported[Int(cookie)] = true
                        completed += 1
                    case .interrupted: interrupted += 1
                    case .resumed: resumed += 1
                    case .received, .connected: break
                    case .sendFailed, .receiveFailed, .disconnected: problems.append("\(name): \(event)")
                    }
                }
                while let message = try connection.receive() {
                    moved = true
                    if !StreamMessage.matches(message, sequence: received) {
                        problems.append("\(name): message \(received) is not the one sent as \(received) (\(message.count) bytes)")
                    }
                    message.release()
                    received += 1
                }
                return moved
            }
        }

        /// Where the queue pairs fail: which side's, after how many messages that side sent.
        struct Failures: Sendable, CustomTestStringConvertible {
            var transport: ConnectedPair.Transport
            var breaks: [(server: Bool, after: Int)]
            var serverPool = false
            var testDescription: String {
                "\(transport.testDescription): " + breaks.map { "\($0.server ? "server" : "client") after \($0.after)" }.joined(separator: ", ")
                    + (serverPool ? ", server on a shared pool" : "")
            }
            static let all = [ConnectedPair.Transport.tcpSocket, .connectionManager].flatMap { transport in
                [
                    Failures(transport: transport, breaks: [(false, 200)]),
                    Failures(transport: transport, breaks: [(true, 200)]),
                    Failures(transport: transport, breaks: [(false, 150), (true, 300), (false, 450)]),
                    Failures(transport: transport, breaks: [(true, 150), (false, 300)], serverPool: true),
                ]
            }
        }

        /// A stream both ways, 600 messages of 1 B to 4 KiB each, 24 in flight; at the points
        /// given, one side's queue pair goes into error, as a link or port error puts it. That
        /// side sees its requests flushed, the other its peer's resume over the TCP socket; both
        /// report `.interrupted`, then `.resumed`, once per failure, and the streams complete
        /// with nothing lost, duplicated, reordered or corrupted — with private slots, and with
        /// the server on a shared pool (whose queue outlives the queue pair).
        @Test(arguments: Failures.all)
        func aFailedQueuePairResumesAndLosesNothing(failures: Failures) throws {
            let slotSize = 4096, total = 600, window = 24
            let pair = try failures.serverPool ? Self.pairWithServerPool(slotSize: slotSize, credits: 16, transport: failures.transport)
                : ConnectedPair(receiveBytes: 16 * slotSize, slotSize: slotSize, transport: failures.transport)
            let ends = [
                End("client", pair.client, pair.clientArea, pair.clientEvents, total: total),
                End("server", pair.server, pair.serverArea, pair.serverEvents, total: total),
            ]
            var breaks = failures.breaks[...]
            let clock = ContinuousClock()
            let deadline = clock.now + .seconds(120)
            var brokeAt = clock.now
            var resumeTimes: [Duration] = []
            while ends.contains(where: { $0.received < total || $0.completed < total }), clock.now < deadline {
                var moved = false
                for end in ends { moved = try end.step(total: total, window: window, slotSize: slotSize) || moved }
                let resumed = ends.map(\.resumed).min()!
                if resumeTimes.count < resumed { resumeTimes.append(clock.now - brokeAt) }
                // The next failure once both resumed from the last one.
                if let next = breaks.first, resumed == failures.breaks.count - breaks.count, (next.server ? ends[1] : ends[0]).next >= next.after {
                    try #require((next.server ? pair.server : pair.client).queuePair).moveToError()
                    breaks.removeFirst()
                    brokeAt = clock.now
                }
                if !moved { usleep(1000) }
            }
            print("resume (\(failures.testDescription)): resumed after \(resumeTimes); client \(ends[0].received) received, \(ends[0].completed) sent; server \(ends[1].received) received, \(ends[1].completed) sent")
            let count = failures.breaks.count
            for end in ends {
                #expect(end.problems.isEmpty, "\(end.problems.prefix(5))")
                #expect(end.received == total, "\(end.name) received \(end.received) of \(total)")
                #expect(end.completed == total, "\(end.name): \(end.completed) of \(total) sends reported sent")
                #expect(end.interrupted == count && end.resumed == count, "\(end.name): \(end.interrupted) interrupted, \(end.resumed) resumed")
            }
            #expect(breaks.isEmpty, "\(breaks.count) failures not made")
            #expect(pair.client.isConnected && pair.server.isConnected)
        }

        /// A pair whose server receives through a shared pool of `credits` slots.
        static func pairWithServerPool(slotSize: Int, credits: Int, transport: ConnectedPair.Transport) throws -> ConnectedPair {
            let serverEvents = try EventChannel(), clientEvents = try EventChannel()
            let serverArea = try DMAArea(size: 4 << 20), clientArea = try DMAArea(size: 4 << 20)
            let pool = try SharedReceivePool(area: serverArea, receiveBytes: 2 * credits * slotSize, slotSize: slotSize)
            if transport == .connectionManager {
                let (client, server) = try ConnectedPair.connect(client: (clientEvents, clientArea), toPool: pool, serverEvents: serverEvents, credits: credits)
                return ConnectedPair(client: (client, clientEvents, clientArea), server: (server, serverEvents, serverArea), sockets: nil, keeping: pool)
            }
            let sockets = try TCPSockets.pair()
            let upgraded = OnThread { () throws -> Connection in
                let connection = try Connection(socket: sockets.server, events: serverEvents)
                try connection.associate(pool, credits: credits)
                return connection
            }
            let client = try Connection(socket: sockets.client, events: clientEvents)
            try client.associate(clientArea, receiveBytes: credits * slotSize, slotSize: slotSize)
            return ConnectedPair(client: (client, clientEvents, clientArea), server: (try upgraded.join(), serverEvents, serverArea),
                                 sockets: sockets, keeping: pool)
        }

        /// A peer that never answers the resume (its program stopped taking its socket's news)
        /// is given up once the deadline passed — not before it, and within one keepalive sweep
        /// after it — and later calls say why.
        @Test func aPeerThatNeverResumesIsGivenUpAtTheDeadline() throws {
            let pair = try ConnectedPair(transport: .tcpSocket)
            pair.client.resumeDeadline = .seconds(2)
            #expect(pair.client.resumeDeadline == .seconds(2))
            pair.server.stopWatchingSocketForTesting()
            let clock = ContinuousClock()
            let start = clock.now
            try #require(pair.client.queuePair).moveToError()
            var interruptedAt: Duration?, disconnectedAt: Duration?, resumed = false
            while disconnectedAt == nil, clock.now - start < .seconds(20) {
                switch try pair.clientEvents.wait(timeout: .milliseconds(200)) {
                case .interrupted?: interruptedAt = clock.now - start
                case .resumed?: resumed = true
                case .disconnected?: disconnectedAt = clock.now - start
                default: break
                }
            }
            print("resume deadline 2 s: interrupted after \(interruptedAt.map(String.init(describing:)) ?? "never"), disconnected after \(disconnectedAt.map(String.init(describing:)) ?? "never")")
            #expect(!resumed)
            let interrupted = try #require(interruptedAt, "the client was never interrupted")
            let disconnected = try #require(disconnectedAt, "the client was not given up within 20 s")
            #expect(interrupted < .seconds(1))
            #expect(disconnected >= .seconds(2) && disconnected < .seconds(2) + PeerTimeout.keepAliveInterval + .seconds(2))
            do {
                _ = try pair.client.receive()
                Issue.record("receive after the deadline did not fail")
            } catch {
                #expect(error.code == .disconnected)
                #expect(error.message.contains("did not resume it within 2"), "\(error.message)")
            }
        }
    }
}
