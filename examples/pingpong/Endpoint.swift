import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

/// One side of the ping-pong: a connected queue pair with a send and a receive buffer in one
/// registered region, and a completion queue it polls or sleeps on.
final class Endpoint {
    /// The registered memory: the send buffer, then the receive buffer.
    struct Memory {
        let protectionDomain: ProtectionDomain
        let region: MemoryRegion

        init(context: Context, size: Int) throws(RDMAError) {
            protectionDomain = try ProtectionDomain(context: context)
            region = try MemoryRegion(protectionDomain: protectionDomain, length: max(2 * size, 1))
        }
    }

    let id: ConnectionID
    let memory: Memory
    let completions: CompletionQueue
    let queuePair: QueuePair
    let size: Int
    let useEvents: Bool
    let pattern: Pattern
    private var polled = [WorkCompletion](repeating: WorkCompletion(), count: 4)
    private var pending: [WorkCompletion] = []
    private var receivePosted = false

    private static let sendID: UInt64 = 1
    private static let receiveID: UInt64 = 2

    init(id: ConnectionID, size: Int, events: Bool, device: String?, memory: Memory? = nil) throws(RDMAError) {
        guard let context = id.context else {
            throw RDMAError(.invalidArgument, operation: "rdma_cm", message: "the connection has no device")
        }
        if let device, device != context.deviceName {
            throw RDMAError(
                .deviceNotFound, operation: "rdma_resolve_addr",
                message: "the address is reached through \(context.deviceName), not \(device): pick the address of a port of \(device)")
        }
        try context.requireActivePort(id.portNumber)
        self.id = id
        self.size = size
        self.useEvents = events
        self.pattern = Pattern(size: size)
        if let memory { self.memory = memory } else { self.memory = try Memory(context: context, size: size) }
        let channel = events ? try CompletionChannel(context: context) : nil
        completions = try CompletionQueue(context: context, capacity: 4, channel: channel)
        queuePair = try id.createQueuePair(
            protectionDomain: self.memory.protectionDomain, sendQueue: completions, receiveQueue: completions,
            capabilities: QueuePairCapabilities(maxSendRequests: 2, maxReceiveRequests: 2))
        if events { try completions.requestNotification() }
        pending.reserveCapacity(4)
        try postReceive()
    }

    private var sendBuffer: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(rebasing: memory.region.bytes[0..<size])
    }

    private var receiveBuffer: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(rebasing: memory.region.bytes[size..<2 * size])
    }

    private func postReceive() throws(RDMAError) {
        try queuePair.postReceive(try memory.region.segment(offset: size, length: size), requestID: Self.receiveID)
        receivePosted = true
    }

    /// Fills the send buffer with message `sequence` and sends it; returns when it completed.
    func send(sequence: UInt64) throws(RDMAError) {
        pattern.fill(sendBuffer, sequence: sequence)
        try queuePair.postSend(try memory.region.segment(offset: 0, length: size), requestID: Self.sendID)
        try waitFor(Self.sendID)
    }

    /// Waits for message `sequence`, checks it if asked, and posts the next receive.
    func receive(sequence: UInt64, check: Bool) throws(RDMAError) {
        let completion = try waitFor(Self.receiveID)
        guard completion.byteCount == size else {
            throw RDMAError(.invalidArgument, operation: "ibv_poll_cq", message: "received \(completion.byteCount) bytes, expected \(size): do both sides use the same -s?")
        }
        if check, !pattern.matches(receiveBuffer, sequence: sequence) {
            throw RDMAError(.workCompletion, operation: "pingpong -c", message: "message \(sequence) differs from what was sent")
        }
        try postReceive()
    }

    /// Waits until the work request `id` completes, keeping other completions for later.
    @discardableResult
    private func waitFor(_ id: UInt64) throws(RDMAError) -> WorkCompletion {
        while true {
            if let index = pending.firstIndex(where: { $0.requestID == id }) {
                let completion = pending.remove(at: index)
                guard completion.isSuccess else {
                    throw RDMAError.workCompletion(completion, id == Self.sendID ? "a send" : "a receive")
                }
                return completion
            }
            let count = try completions.poll(into: &polled)
            if count > 0 {
                pending.append(contentsOf: polled[0..<count])
            } else if useEvents {
                // Sleep until the queue reports a completion, re-arm, then poll again: a completion
                // that arrived before the re-arm is found by that poll.
                guard try completions.channel!.waitForEvent(timeout: .seconds(30)) != nil else {
                    throw RDMAError(.timedOut, operation: "ibv_get_cq_event", message: "no completion within 30 s: did the peer stop?")
                }
                try completions.requestNotification()
            }
        }
    }
}

/// The bytes of message n: a window into a fixed pseudo-random table, shifted by n, so that
/// filling is one memcpy and checking one memcmp.
struct Pattern {
    private let table: [UInt8]

    init(size: Int) {
        var state: UInt32 = 2_463_534_242
        table = (0..<(size + 256)).map { _ in
            state ^= state << 13; state ^= state >> 17; state ^= state << 5  // xorshift32
            return UInt8(truncatingIfNeeded: state)
        }
    }

    func fill(_ buffer: UnsafeMutableRawBufferPointer, sequence: UInt64) {
        table.withUnsafeBytes { table in
            buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: table[Int(sequence % 256)...].prefix(buffer.count)))
        }
    }

    func matches(_ buffer: UnsafeMutableRawBufferPointer, sequence: UInt64) -> Bool {
        table.withUnsafeBytes { table in
            buffer.count == 0 || memcmp(buffer.baseAddress!, table.baseAddress! + Int(sequence % 256), buffer.count) == 0
        }
    }
}
