import CMallocCounter
import CRDMA
@testable import DMAIO
import Foundation
import RDMAVerbs
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension RxeIntegration {
    /// The proposal's calls on a real device: dma_alloc, dma_assoc, sio_reserve, aio_send,
    /// aio_recv, sio_release and the event channel.
    @Suite struct ProposalAPI {
        init() throws { try RxeEnvironment.requireRxeDevice() }

        /// Reserves, fills and sends message `sequence`; false when the area is exhausted.
        static func trySend(_ pair: ConnectedPair, sequence: Int, size: Int) throws(RDMAError) -> Bool {
            let buffer: SendBuffer
            do {
                buffer = try pair.clientArea.reserve(size)
            } catch {
                if error.code == .areaExhausted { return false }
                throw error
            }
            buffer.withUnsafeMutableBytes { StreamMessage.fill($0, sequence: sequence) }
            try pair.client.send(buffer, cookie: UInt64(sequence))
            return true
        }

        /// Sends `count` messages from the client, reserving buffers as the area allows;
        /// returns how often it had to wait for the area (back-pressure).
        static func sendStream(_ pair: ConnectedPair, count: Int, slotSize: Int) throws -> Int {
            var waits = 0, sent = 0
            func drain(blocking: Bool) throws {
                while let event = blocking ? try pair.clientEvents.wait(timeout: .seconds(30)) : try pair.clientEvents.next() {
                    switch event {
                    case .sent: sent += 1
                    case .sendFailed(_, let cookie, let status): throw RDMAError(.workCompletion, operation: "test", message: "send \(cookie) failed: \(status)")
                    case .disconnected: throw RDMAError(.disconnected, operation: "test", message: "disconnected mid-stream")
                    default: break
                    }
                    if blocking { return }
                }
                if blocking { throw RDMAError(.timedOut, operation: "test", message: "no event for 30 s with \(count - sent) sends outstanding") }
            }
            for sequence in 0..<count {
                let size = StreamMessage.size(sequence, slotSize: slotSize)
                while !(try Self.trySend(pair, sequence: sequence, size: size)) {
                    waits += 1
                    try drain(blocking: true)
                }
                try drain(blocking: false)
            }
            while sent < count { try drain(blocking: true) }
            return waits
        }

        /// Receives and checks `count` messages in order, stalling once for `stall` at the middle.
        static func receiveStream(_ pair: ConnectedPair, count: Int, slotSize: Int, stall: Duration = .zero) throws -> Int {
            var sequence = 0
            while sequence < count {
                if sequence == count / 2 && stall > .zero { Thread.sleep(forTimeInterval: Double(stall.components.seconds)) }
                guard let message = try pair.server.receive() else {
                    _ = try pair.serverEvents.wait(timeout: .seconds(30))
                    continue
                }
                guard message.count == StreamMessage.size(sequence, slotSize: slotSize),
                      StreamMessage.matches(message, sequence: sequence)
                else {
                    throw RDMAError(.workCompletion, operation: "test",
                                    message: "message \(sequence) lost, duplicated, reordered or corrupted (\(message.count) bytes)")
                }
                message.release()
                sequence += 1
            }
            return sequence
        }

        /// 100,000 messages of 1 B ... the slot size; the receiver stalls for 3 s in the middle,
        /// and the sender is throttled (it waits for its area), never failed.
        @Test func hundredThousandMessagesSurviveAStalledReceiver() throws {
            let pair = try ConnectedPair(areaSize: 1 << 20, receiveBytes: 128 << 10, slotSize: 4096)
            let count = 100_000
            let receiver = OnThread { try Self.receiveStream(pair, count: count, slotSize: 4096, stall: .seconds(3)) }
            let waits = try Self.sendStream(pair, count: count, slotSize: 4096)
            #expect(try receiver.join() == count)
            #expect(waits > 0, "the sender never had to wait: the stall did not throttle it")
            #expect(pair.clientArea.bytesInUse == 2 * 32 * 4096, "only the client's receive slots remain reserved")
        }

        /// Released slots are re-posted in batches (a quarter of the grant at a time), except when
        /// the sender may be out of credits: a receiver that holds all 32 messages it granted and
        /// then releases one lets the 33rd through at once, not after eight releases.
        @Test func oneReleaseLetsASenderOutOfCreditsGoOn() throws {
            let granted = 32, size = 64
            let pair = try ConnectedPair(areaSize: 1 << 20, receiveBytes: granted * 4096, slotSize: 4096)
            #expect(ConnectionCore.repostBatchSize(granting: granted) == 8)
            for sequence in 0...granted {
                #expect(try Self.trySend(pair, sequence: sequence, size: size))
            }
            #expect(pair.client.sendCounters.waiting == 1, "the message after the grant waits for a credit")
            /// Takes messages (checked, held) until `total` arrived or `deadline` passed, pumping both sides.
            var arrived = 0
            func take(until total: Int, deadline: ContinuousClock.Instant) throws {
                while arrived < total, ContinuousClock.now < deadline {
                    while try pair.clientEvents.next() != nil {}
                    guard let bytes = try pair.server.receiveRetained() else { continue }
                    guard bytes.count == size, StreamMessage.matches(bytes, sequence: arrived) else {
                        throw RDMAError(.workCompletion, operation: "test", message: "message \(arrived) lost, reordered or corrupted")
                    }
                    arrived += 1
                }
            }
            try take(until: granted, deadline: .now + .seconds(10))
            #expect(arrived == granted)
            try take(until: granted + 1, deadline: .now + .milliseconds(300))
            #expect(arrived == granted, "a message came through without a credit")
            try pair.serverArea.releaseOldest(bytes: size)
            try take(until: granted + 1, deadline: .now + .seconds(10))
            #expect(arrived == granted + 1, "one release did not hand a credit back to a sender that had none")
            try pair.serverArea.releaseOldest(bytes: (arrived - 1) * size)
        }

        /// A received buffer outlives its connection: with the `Connection` gone (closed), the
        /// bytes stay readable and the receive slots stay reserved; the buffer's release lets
        /// the connection's state go, and the slots return to the area.
        @Test func aReceivedBufferOutlivesItsConnection() throws {
            let serverEvents = try EventChannel(), clientEvents = try EventChannel()
            let serverArea = try DMAArea(size: 1 << 20), clientArea = try DMAArea(size: 1 << 20)
            // Nothing but `server` holds the server's connection.
            let client: Connection
            var server: Connection?
            (client, server) = try ConnectedPair.connect(
                client: (clientEvents, clientArea), server: (serverEvents, serverArea), receiveBytes: 8 * 4096, slotSize: 4096)
            defer { client.close() }
            let slotBytes = serverArea.bytesInUse
            #expect(slotBytes > 0)
            let buffer = try clientArea.reserve(100)
            buffer.withUnsafeMutableBytes { StreamMessage.fill($0, sequence: 7) }
            try client.send(buffer, cookie: 7)
            let deadline = ContinuousClock.now + .seconds(10)
            var received: ReceivedBuffer? = nil
            while received == nil, ContinuousClock.now < deadline { received = try server!.receive() }
            guard let message = received.take() else {
                Issue.record("the message did not arrive within 10 s")
                return
            }
            server = nil
            let intact = message.count == 100 && StreamMessage.matches(message, sequence: 7)
            #expect(intact, "the bytes changed after the connection went")
            #expect(serverArea.bytesInUse == slotBytes, "the receive slots went back while a buffer was out")
            message.release()
            #expect(serverArea.bytesInUse == 0, "the released buffer did not let the closed connection's slots go")
        }

        /// Takes the message a `.received` event announced, checks it and releases it.
        static func takeAnnounced(_ pair: ConnectedPair, sequence: Int, length: Int) throws {
            guard let message = try pair.server.receive() else {
                throw RDMAError(.workCompletion, operation: "test", message: "a received event without a message")
            }
            guard message.count == length, StreamMessage.matches(message, sequence: sequence) else {
                throw RDMAError(.workCompletion, operation: "test", message: "message \(sequence) corrupted (\(message.count) bytes, \(length) announced)")
            }
            message.release()
        }

        /// A plain level-triggered poll() loop on ec_to_fd drives the receiver to the end.
        @Test(.serialized, arguments: [ConnectedPair.Transport.connectionManager, .tcpSocket])
        func pollLoopOnTheDescriptorDrivesAStream(over transport: ConnectedPair.Transport) throws {
            let pair = try ConnectedPair(transport: transport)
            let count = 5000
            let receiver = OnThread { () throws -> Int in
                var sequence = 0
                var descriptor = pollfd(fd: pair.serverEvents.fileDescriptor, events: Int16(POLLIN), revents: 0)
                while sequence < count {
                    guard poll(&descriptor, 1, 30_000) == 1 else { throw RDMAError(.timedOut, operation: "poll", message: "no event for 30 s") }
                    while let event = try pair.serverEvents.next() {
                        guard case .received(_, let length) = event else { continue }
                        try Self.takeAnnounced(pair, sequence: sequence, length: length)
                        sequence += 1
                    }
                }
                return sequence
            }
            _ = try Self.sendStream(pair, count: count, slotSize: 4096)
            #expect(try receiver.join() == count)
        }

        /// The same with epoll, level-triggered.
        @Test func epollLoopOnTheDescriptorDrivesAStream() throws {
            let pair = try ConnectedPair()
            let count = 5000
            let receiver = OnThread { () throws -> Int in
                let epoll = epoll_create1(0)
                defer { close(epoll) }
                var registration = epoll_event(events: EPOLLIN.rawValue, data: epoll_data_t(fd: pair.serverEvents.fileDescriptor))
                try #require(epoll_ctl(epoll, EPOLL_CTL_ADD, pair.serverEvents.fileDescriptor, &registration) == 0)
                var ready = epoll_event()
                var sequence = 0
                while sequence < count {
                    guard epoll_wait(epoll, &ready, 1, 30_000) == 1 else { throw RDMAError(.timedOut, operation: "epoll_wait", message: "no event for 30 s") }
                    // Take one event per wake-up: the descriptor must stay readable for the rest.
                    guard let event = try pair.serverEvents.next(), case .received(_, let length) = event else { continue }
                    try Self.takeAnnounced(pair, sequence: sequence, length: length)
                    sequence += 1
                }
                return sequence
            }
            _ = try Self.sendStream(pair, count: count, slotSize: 4096)
            #expect(try receiver.join() == count)
        }

        /// The send posts the reserved buffer's own address; the receive hands out where the
        /// device wrote, inside the receiver's area.
        @Test func sendAndReceiveCopyNothing() throws {
            let pair = try ConnectedPair()
            let buffer = try pair.clientArea.reserve(1000)
            let address = UnsafeRawPointer(buffer.baseAddress)
            #expect(pair.clientArea.contains(address, count: 1000))
            buffer.withUnsafeMutableBytes { StreamMessage.fill($0, sequence: 7) }
            try pair.client.send(buffer, cookie: 99)
            #expect(pair.client.lastPostedSendAddress == address)
            func receiveOne() throws -> ReceivedBuffer {
                while true {
                    if let message = try pair.server.receive() { return message }
                    _ = try pair.serverEvents.wait(timeout: .seconds(10))
                }
            }
            let received = try receiveOne()
            #expect(received.withUnsafeBytes { pair.serverArea.contains($0.baseAddress!, count: $0.count) })
            let intact = received.count == 1000 && StreamMessage.matches(received, sequence: 7)
            #expect(intact)
            received.release()
            var sentCookie: UInt64? = nil
            while sentCookie == nil, let event = try pair.clientEvents.wait(timeout: .seconds(10)) {
                if case .sent(_, let cookie) = event { sentCookie = cookie }
            }
            #expect(sentCookie == 99)
        }

        /// A small payload goes inline and arrives intact; its buffer is back in the area with
        /// its send event, not before (a connection that resumes may send it again).
        @Test func smallPayloadsGoInline() throws {
            let pair = try ConnectedPair()
            let baseline = pair.clientArea.bytesInUse
            let buffer = try pair.clientArea.reserve(Connection.inlineLimit)
            buffer.withUnsafeMutableBytes { StreamMessage.fill($0, sequence: 3) }
            #expect(pair.clientArea.bytesInUse == baseline + DMAArea.minimumBlock)
            // The device takes payloads this small inline (in the work request).
            #expect(try #require(pair.client.queuePair).capabilities.maxInlineData >= Connection.inlineLimit)
            try pair.client.send(buffer, cookie: 42)
            var received = false
            while !received {
                if let message = try pair.server.receive() {
                    let intact = message.count == Connection.inlineLimit && StreamMessage.matches(message, sequence: 3)
                    #expect(intact)
                    message.release()
                    received = true
                } else {
                    _ = try pair.serverEvents.wait(timeout: .seconds(10))
                }
            }
            var cookie: UInt64? = nil
            while cookie == nil, let event = try pair.clientEvents.wait(timeout: .seconds(10)) {
                if case .sent(_, let value) = event { cookie = value }
            }
            #expect(cookie == 42)
            #expect(pair.clientArea.bytesInUse == baseline, "the buffer is back in the area with its send event")
        }

        /// Reserve, send, receive, release and event delivery allocate nothing per message once
        /// warm: counted by a malloc hook, per thread, over 10,000 messages of up to a slot —
        /// and over 2,000 where every other one is 64 KiB, sixteen slots, sent by rendezvous
        /// (window bind, read, invalidation; docs/large-messages.md).
        @Test(arguments: [false, true])
        func steadyStateAllocatesNothingPerMessage(large: Bool) throws {
            try #require(malloc_counter_is_active() == 1, "this test bundle was built without the malloc counter (a sanitizer build): nothing can be counted")
            let pair = try ConnectedPair()
            let warmUp = large ? 400 : 2000, measured = large ? 2000 : 10_000
            func size(_ sequence: Int) -> Int { large ? (sequence % 2 == 0 ? 64 << 10 : 100) : StreamMessage.size(sequence, slotSize: 4096) }
            // Set TRACE_ALLOCATIONS to print where allocations in the measured loop come from.
            let trace = ProcessInfo.processInfo.environment["TRACE_ALLOCATIONS"] != nil
            // The receiver starts once the sender's first window is out: the most sends the
            // connection ever has in flight (and, for large ones, the most windows it makes)
            // are then reached in the warm-up, whatever the load on the machine.
            let windowSent = DispatchSemaphore(value: 0)
            let receiver = OnThread { () throws -> (Int, UInt) in
                windowSent.wait()
                var sequence = 0, start: UInt = 0
                while sequence < warmUp + measured {
                    if sequence == warmUp {
                        start = malloc_counter_thread_allocations()
                        if trace { malloc_counter_trace_next(8) }
                    }
                    guard let message = try pair.server.receive() else {
                        _ = try pair.serverEvents.wait(timeout: .seconds(30))
                        continue
                    }
                    if !StreamMessage.matches(message, sequence: sequence) { return (sequence, 0) }
                    message.release()
                    sequence += 1
                }
                return (sequence, malloc_counter_thread_allocations() - start)
            }
            var start: UInt = 0
            var sent = 0
            // A sender that keeps a window of sends outstanding, as a real one does: messages
            // beyond the peer's credits wait in the connection's queue, which then never grows.
            let window = 64
            for sequence in 0..<(warmUp + measured) {
                if sequence == warmUp {
                    start = malloc_counter_thread_allocations()
                    if trace { malloc_counter_trace_next(8) }
                }
                let size = size(sequence)
                if sequence == window { windowSent.signal() }
                while sequence - sent >= window {
                    if case .sent = try pair.clientEvents.wait(timeout: .seconds(30)) { sent += 1 }
                }
                while !(try Self.trySend(pair, sequence: sequence, size: size)) {
                    if case .sent = try pair.clientEvents.wait(timeout: .seconds(30)) { sent += 1 }
                }
                while let event = try pair.clientEvents.next() { if case .sent = event { sent += 1 } }
            }
            let senderAllocations = malloc_counter_thread_allocations() - start
            while sent < warmUp + measured { if case .sent = try pair.clientEvents.wait(timeout: .seconds(30)) { sent += 1 } }
            let (received, receiverAllocations) = try receiver.join()
            #expect(received == warmUp + measured)
            print("allocations over \(measured) messages: sender \(senderAllocations), receiver \(receiverAllocations)")
            #expect(senderAllocations == 0, "sender allocated \(senderAllocations) times over \(measured) messages")
            #expect(receiverAllocations == 0, "receiver allocated \(receiverAllocations) times over \(measured) messages")
        }

        @Test func badInputsGiveTypedErrors() throws {
            let pair = try ConnectedPair(areaSize: 1 << 20, receiveBytes: 64 << 10, slotSize: 4096)
            let area = pair.clientArea
            func code(_ body: () throws -> Void) -> (RDMAError.Code?, String) {
                do { try body(); return (nil, "") } catch let error as RDMAError { return (error.code, error.message) } catch { return (nil, "\(error)") }
            }
            var (c, m) = code { _ = try area.reserve(0) }
            #expect(c == .invalidArgument && m == "cannot reserve 0 bytes: the size must be positive")
            (c, m) = code { _ = try area.reserve(area.size + 1) }
            #expect(c == .invalidArgument && m.contains("the buffer must fit in the area"))
            (c, m) = code { _ = try DMAArea(size: 0) }
            #expect(c == .invalidArgument && m.contains("at least 4096 bytes"))
            // Exhaustion: hold every free block, then ask for one more.
            var held: [Int] = []
            while let offset = try? area.allocate(64 << 10, for: "test") { held.append(offset) }
            (c, m) = code { _ = try area.reserve(64 << 10) }
            #expect(c == .areaExhausted && m.contains("in-flight sends, unsent buffers and receive slots hold it"))
            for offset in held { area.free(offset) }
            // A buffer of another area. (Too large for the peer: LargeMessageTests.)
            (c, m) = code { try pair.client.send(try pair.serverArea.reserve(16), cookie: 0) }
            #expect(c == .wrongArea)
            // Association twice.
            (c, m) = code { try pair.client.associate(area, receiveBytes: 8192, slotSize: 4096) }
            #expect(c == .alreadyAssociated && m.contains("already associated"))
            // Send on a connection that is resolved but not associated.
            let other = try Connection(to: "\(RxeEnvironment.address):\(RxeEnvironment.freshPort())", events: pair.clientEvents)
            (c, m) = code { try other.send(try area.reserve(16), cookie: 0) }
            #expect(c == .notConnected && m.contains("not associated with an area yet"))
            (c, m) = code { _ = try other.receive() }
            #expect(c == .notConnected)
            #expect(area.bytesInUse == pair.clientArea.bytesInUse)
            // After the peer disconnects: an event, then typed errors; nothing leaks.
            let inUseBefore = area.bytesInUse
            pair.server.close()
            var sawDisconnect = false
            while !sawDisconnect, let event = try pair.clientEvents.wait(timeout: .seconds(10)) {
                if case .disconnected(let id) = event { sawDisconnect = id == pair.client.id }
            }
            #expect(sawDisconnect)
            (c, m) = code { try pair.client.send(try area.reserve(16), cookie: 0) }
            #expect(c == .disconnected && m.contains("disconnected"))
            (c, m) = code { _ = try pair.client.receive() }
            #expect(c == .disconnected)
            #expect(area.bytesInUse == inUseBefore, "a refused send returns its buffer to the area")
            pair.client.close()
            (c, m) = code { try pair.client.send(try area.reserve(16), cookie: 0) }
            #expect(c == .notConnected && m.contains("was closed"))
        }

        /// The seed's sio_release(handle, size): the oldest bytes go first, across messages, and
        /// a slot returns (with its credit) once all its bytes are released.
        @Test func fifoReleaseFreesTheOldestBytesFirst() throws {
            let pair = try ConnectedPair(areaSize: 1 << 20, receiveBytes: 4 * 4096, slotSize: 4096)
            func receiveRetained(_ count: Int) throws -> [UnsafeRawBufferPointer] {
                var views: [UnsafeRawBufferPointer] = []
                let deadline = ContinuousClock.now + .seconds(30)
                while views.count < count {
                    if let view = try pair.server.receiveRetained() {
                        views.append(view)
                    } else {
                        // Both sides' event channels drive their queues: the client's takes
                        // the credits that let its queued messages go.
                        while try pair.clientEvents.next() != nil {}
                        _ = try pair.serverEvents.wait(timeout: .milliseconds(50))
                        try #require(ContinuousClock.now < deadline, "only \(views.count) of \(count) messages arrived")
                    }
                }
                return views
            }
            func send(_ sizes: [Int], from first: Int) throws {
                for (index, size) in sizes.enumerated() {
                    let buffer = try pair.clientArea.reserve(size)
                    buffer.withUnsafeMutableBytes { StreamMessage.fill($0, sequence: first + index) }
                    try pair.client.send(buffer, cookie: UInt64(first + index))
                }
            }
            try send([100, 200, 300], from: 0)
            let views = try receiveRetained(3)
            #expect(views.map(\.count) == [100, 200, 300])
            for (index, view) in views.enumerated() { #expect(StreamMessage.matches(view, sequence: index)) }
            let area = pair.serverArea
            #expect(area.retainedBytes == 600)
            try area.releaseOldest(bytes: 150)
            #expect(area.retainedBytes == 450)
            #expect {
                try area.releaseOldest(bytes: 451)
            } throws: { error in
                (error as! RDMAError).code == .invalidArgument && (error as! RDMAError).message == "cannot release 451 bytes: only 450 received bytes are held"
            }
            #expect(throws: RDMAError.self) { try area.releaseOldest(bytes: 0) }
            #expect(area.retainedBytes == 450, "a refused release changes nothing")
            try area.releaseOldest(bytes: 450)
            #expect(area.retainedBytes == 0)
            // The peer was granted 4 credits; 4 more messages arrive only if all 3 slots came back.
            try send([10, 20, 30, 40], from: 3)
            let more = try receiveRetained(4)
            #expect(more.map(\.count) == [10, 20, 30, 40])
            for (index, view) in more.enumerated() { #expect(StreamMessage.matches(view, sequence: 3 + index)) }
            try area.releaseOldest(bytes: 100)
        }

        /// Three connections share one pool of receive slots (a shared receive queue) on one
        /// event channel; each streams 1,000 messages, all arrive intact and in order.
        @Test func connectionsShareOneReceivePool() throws {
            let serverEvents = try EventChannel()
            let serverArea = try DMAArea(size: 1 << 20)
            let pool = try SharedReceivePool(area: serverArea, receiveBytes: 64 * 4096, slotSize: 4096)
            #expect(pool.slotCount == 64)
            let address = "\(RxeEnvironment.address):\(RxeEnvironment.freshPort())"
            let listener = try Listener(on: address, events: serverEvents)
            let clientCount = 3, count = 1000
            let accepted = OnThread { () throws -> [Connection] in
                try (0..<clientCount).map { _ in
                    let connection = try listener.accept(timeout: .seconds(10))
                    try connection.associate(pool, credits: 8)
                    return connection
                }
            }
            let clients = try (0..<clientCount).map { _ -> (Connection, DMAArea, EventChannel) in
                let events = try EventChannel()
                let area = try DMAArea(size: 1 << 20)
                let connection = try Connection(to: address, events: events)
                try connection.associate(area, receiveBytes: 8 * 4096, slotSize: 4096)
                return (connection, area, events)
            }
            let servers = try accepted.join()
            #expect(pool.unclaimedSlots == 64 - clientCount * 16)
            let receiver = OnThread { () throws -> [Int] in
                var next = [Int](repeating: 0, count: clientCount)
                while next.contains(where: { $0 < count }) {
                    var progress = false
                    for (index, connection) in servers.enumerated() {
                        while let message = try connection.receive() {
                            guard message.count == StreamMessage.size(next[index], slotSize: 4096),
                                  StreamMessage.matches(message, sequence: next[index]) else {
                                throw RDMAError(.workCompletion, operation: "test", message: "connection \(index) message \(next[index]) corrupted")
                            }
                            message.release()
                            next[index] += 1
                            progress = true
                        }
                    }
                    if !progress { _ = try serverEvents.wait(timeout: .seconds(30)) }
                }
                return next
            }
            // The clients take turns, one message each, so the streams interleave on the pool.
            var sent = [Int](repeating: 0, count: clientCount)
            func clientIndex(_ events: EventChannel) -> Int { clients.firstIndex { $0.2 === events }! }
            for sequence in 0..<count {
                for (connection, area, events) in clients {
                    while true {
                        if let buffer = try? area.reserve(StreamMessage.size(sequence, slotSize: 4096)) {
                            buffer.withUnsafeMutableBytes { StreamMessage.fill($0, sequence: sequence) }
                            try connection.send(buffer, cookie: UInt64(sequence))
                            break
                        }
                        if case .sent? = try events.wait(timeout: .seconds(30)) { sent[clientIndex(events)] += 1 }
                    }
                    while let event = try events.next() { if case .sent = event { sent[clientIndex(events)] += 1 } }
                }
            }
            // Messages still waiting for credits go out as the clients keep driving their channels.
            for (index, (_, _, events)) in clients.enumerated() {
                while sent[index] < count {
                    guard let event = try events.wait(timeout: .seconds(30)) else {
                        throw RDMAError(.timedOut, operation: "test", message: "client \(index): \(sent[index]) of \(count) sends completed")
                    }
                    if case .sent = event { sent[index] += 1 }
                }
            }
            #expect(try receiver.join() == [Int](repeating: count, count: clientCount))
            for connection in servers { connection.close() }
            #expect(pool.unclaimedSlots == 64, "closing returns every claimed slot")
        }

        /// A pool that nothing holds any more — its connections closed, the program dropped it
        /// — gives its slots back to the area (and its shared receive queue to the device),
        /// while the event channel lives on. The channel used to keep every pool it had seen.
        @Test func aPoolNothingHoldsGivesItsSlotsBack() throws {
            let serverEvents = try EventChannel()
            let serverArea = try DMAArea(size: 4 << 20)
            try {
                let pool = try SharedReceivePool(area: serverArea, receiveBytes: 32 * 4096, slotSize: 4096)
                let clientArea = try DMAArea(size: 4 << 20)
                let (client, server) = try ConnectedPair.connect(
                    client: (try EventChannel(), clientArea), toPool: pool, serverEvents: serverEvents, credits: 8)
                let (received, sent) = try RxeIntegration.LargeMessages.exchange(
                    [100, 4096, 1 << 20, 7], from: client, area: clientArea, to: server, receiverArea: serverArea)
                #expect(received == 4 && sent.count == 4)
                client.close()
                server.close()
            }()
            let deadline = ContinuousClock.now + .seconds(10)
            while serverArea.bytesInUse != 0, ContinuousClock.now < deadline {
                while try serverEvents.next() != nil {}
                usleep(20_000)
            }
            #expect(serverArea.bytesInUse == 0, "\(serverArea.bytesInUse) bytes of the area still held after the pool and its connection went")
        }

        /// Two connections on one server channel, each echoing 1,000 messages of varying size, the
        /// server polling both with aio_recv: each poll brings one connection's messages mixed with
        /// the other's and with the completions of earlier echoes. Every message and every echo
        /// arrives intact and in order, and every echo's send is reported once, in order, by
        /// ec_next_event.
        @Test func twoConnectionsOnOneChannelEchoEveryMessageInOrder() throws {
            let serverEvents = try EventChannel()
            let serverArea = try DMAArea(size: 1 << 20)
            let address = "\(RxeEnvironment.address):\(RxeEnvironment.freshPort())"
            let listener = try Listener(on: address, events: serverEvents)
            let count = 1000, slotSize = 4096
            let accepted = OnThread { () throws -> [Connection] in
                try (0..<2).map { _ in
                    let connection = try listener.accept(timeout: .seconds(10))
                    try connection.associate(serverArea, receiveBytes: 8 * slotSize, slotSize: slotSize)
                    return connection
                }
            }
            let clients = try (0..<2).map { _ -> (Connection, DMAArea, EventChannel) in
                let events = try EventChannel()
                let area = try DMAArea(size: 1 << 20)
                let connection = try Connection(to: address, events: events)
                try connection.associate(area, receiveBytes: 8 * slotSize, slotSize: slotSize)
                return (connection, area, events)
            }
            let servers = try accepted.join()
            let deadline = ContinuousClock.now + .seconds(60)
            func check(_ condition: Bool, _ what: @autoclosure () -> String) throws {
                guard condition else { throw RDMAError(.workCompletion, operation: "test", message: what()) }
                guard ContinuousClock.now < deadline else { throw RDMAError(.timedOut, operation: "test", message: "not done within 60 s: \(what())") }
            }
            // The server answers each message with a copy, polling its two connections in turn.
            let server = OnThread { () throws -> (received: [Int], echoesSent: [Int]) in
                var received = [0, 0], echoesSent = [0, 0]
                func takeEvents() throws {
                    while let event = try serverEvents.next() {
                        switch event {
                        case .sent(let connection, let cookie):
                            let index = connection == servers[0].id ? 0 : 1
                            try check(cookie == UInt64(echoesSent[index]), "server, connection \(index): echo \(cookie) reported sent, expected \(echoesSent[index])")
                            echoesSent[index] += 1
                        case .sendFailed, .receiveFailed, .disconnected, .interrupted, .resumed:
                            throw RDMAError(.workCompletion, operation: "test", message: "server: \(event)")
                        case .received, .connected:
                            break
                        }
                    }
                }
                while received != [count, count] || echoesSent != [count, count] {
                    for (index, connection) in servers.enumerated() {
                        while let message = try connection.receive() {
                            let sequence = received[index]
                            try check(message.count == StreamMessage.size(sequence, slotSize: slotSize) && StreamMessage.matches(message, sequence: sequence),
                                      "server, connection \(index): message \(sequence) differs")
                            var echo: SendBuffer? = nil
                            while echo == nil {
                                do { echo = try serverArea.reserve(message.count) } catch let error as RDMAError where error.code == .areaExhausted { try takeEvents() }
                            }
                            echo!.withUnsafeMutableBytes { destination in message.withUnsafeBytes { destination.copyMemory(from: $0) } }
                            try connection.send(echo.take()!, cookie: UInt64(sequence))
                            message.release()
                            received[index] += 1
                        }
                    }
                    try takeEvents()
                    try check(true, "server: received \(received), echoes sent \(echoesSent)")
                }
                return (received, echoesSent)
            }
            // Each client streams its messages and takes the echoes as they come.
            let streams = clients.enumerated().map { index, client in
                OnThread { () throws -> (echoes: Int, sent: Int) in
                    let (connection, area, events) = client
                    var posted = 0, echoes = 0, sent = 0
                    while echoes < count || sent < count {
                        if posted < count, let buffer = try? area.reserve(StreamMessage.size(posted, slotSize: slotSize)) {
                            buffer.withUnsafeMutableBytes { StreamMessage.fill($0, sequence: posted) }
                            try connection.send(buffer, cookie: UInt64(posted))
                            posted += 1
                        }
                        while let echo = try connection.receive() {
                            try check(echo.count == StreamMessage.size(echoes, slotSize: slotSize) && StreamMessage.matches(echo, sequence: echoes),
                                      "client \(index): echo \(echoes) differs")
                            echo.release()
                            echoes += 1
                        }
                        while let event = try events.next() {
                            switch event {
                            case .sent: sent += 1
                            case .received, .connected: break
                            case .sendFailed, .receiveFailed, .disconnected, .interrupted, .resumed:
                                throw RDMAError(.workCompletion, operation: "test", message: "client \(index): \(event)")
                            }
                        }
                        try check(true, "client \(index): \(posted) posted, \(sent) sent, \(echoes) echoes")
                    }
                    return (echoes, sent)
                }
            }
            for stream in streams {
                let (echoes, sent) = try stream.join()
                #expect(echoes == count && sent == count)
            }
            let (received, echoesSent) = try server.join()
            #expect(received == [count, count] && echoesSent == [count, count])
            for connection in servers {
                let counters = connection.sendCounters
                #expect(counters.waiting == 0 && counters.posted == 0, "every echo completed: \(counters)")
            }
        }

        /// ec_delay sleeps when nothing is pending, also right after a wake-up by a completion
        /// (whose notification it reads later, before it arms the queue again): each of these
        /// waits lasts its timeout and takes next to no CPU time, where a descriptor left readable
        /// would make it spin.
        @Test func waitSleepsAfterAWakeUp() throws {
            let pair = try ConnectedPair()
            func threadCPUTime() -> Duration {
                var now = timespec()
                clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now)
                return .seconds(now.tv_sec) + .nanoseconds(now.tv_nsec)
            }
            while let event = try pair.serverEvents.next() { _ = event }
            for round in 0..<3 {
                let waiter = OnThread { () throws -> (idle: Duration, idleCPU: Duration) in
                    // Sleeps until the message's completion wakes it.
                    var received = false
                    while !received {
                        guard let event = try pair.serverEvents.wait(timeout: .seconds(10)) else {
                            throw RDMAError(.timedOut, operation: "test", message: "round \(round): the message was not announced within 10 s")
                        }
                        if case .received = event { received = true }
                    }
                    let cpu = threadCPUTime(), start = ContinuousClock.now
                    let none = try pair.serverEvents.wait(timeout: .milliseconds(300))
                    #expect(none == nil, "round \(round): no event is pending")
                    return (ContinuousClock.now - start, threadCPUTime() - cpu)
                }
                Thread.sleep(forTimeInterval: 0.1)
                try pair.client.send(try pair.clientArea.reserve(64), cookie: UInt64(round))
                let (idle, idleCPU) = try waiter.join()
                guard let message = try pair.server.receive() else {
                    Issue.record("round \(round): the announced message is not there")
                    return
                }
                message.release()
                #expect(idle >= .milliseconds(290), "round \(round): the wait lasted its timeout (\(idle))")
                #expect(idleCPU < .milliseconds(100), "round \(round): it slept, it did not spin (\(idleCPU) of CPU in \(idle))")
            }
        }

        /// An area on 2 MiB huge pages, once some are reserved; without them, the error says how.
        @Test func hugePageAreas() throws {
            let reserve = "/proc/sys/vm/nr_hugepages"
            let before = try String(contentsOfFile: reserve, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            defer { try? before.write(toFile: reserve, atomically: false, encoding: .utf8) }
            try "0".write(toFile: reserve, atomically: false, encoding: .utf8)
            #expect {
                _ = try DMAArea(size: 4 << 20, hugePages: true)
            } throws: { error in
                (error as! RDMAError).message.contains("reserve them first (echo N > /proc/sys/vm/nr_hugepages)")
            }
            try "4".write(toFile: reserve, atomically: false, encoding: .utf8)
            let area = try DMAArea(size: 4 << 20, hugePages: true)
            #expect(area.size == 4 << 20)
            let buffer = try area.reserve(1 << 20)
            #expect(Int(bitPattern: buffer.baseAddress) % 4096 == 0)
        }

        /// One connection failing leaves another on the same event channel working.
        @Test func otherConnectionsAreUnaffected() throws {
            let first = try ConnectedPair()
            let second = try ConnectedPair()
            first.server.close()
            _ = try? first.client.send(try first.clientArea.reserve(8), cookie: 0)
            let receiver = OnThread { try Self.receiveStream(second, count: 1000, slotSize: 4096) }
            _ = try Self.sendStream(second, count: 1000, slotSize: 4096)
            #expect(try receiver.join() == 1000)
        }

        /// The AsyncSequence of events delivers without a busy loop.
        @Test func eventsArriveThroughTheAsyncSequence() async throws {
            let pair = try ConnectedPair()
            try pair.client.send(try pair.clientArea.reserve(100), cookie: 5)
            var cookie: UInt64? = nil
            for try await event in pair.clientEvents {
                if case .sent(_, let value) = event { cookie = value; break }
            }
            #expect(cookie == 5)
        }
    }
}
