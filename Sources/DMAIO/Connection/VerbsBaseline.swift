import CRDMA
import RDMAVerbs
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A connection driven by bare verbs calls, the way `ibv_rc_pingpong` drives its queue pair:
/// the reference that measures what the library's own path costs (`pingpong --against-verbs`).
///
/// It uses the connection's queue pair, completion queue and receive slots as they are, so that
/// a program can alternate between the library and this baseline on one connection and compare
/// the two within one run, free of the run-to-run swings of a shared or emulated host. A
/// baseline message is a `SEND` with immediate data 0 (no credits, no flags) out of one buffer
/// reserved for it; the receiving baseline re-posts the slot at once, with the request id the
/// library gave it, so the library's view of its slots and credits is the same before and after.
///
/// Both peers must switch between the library and the baseline at the same message (a
/// ping-pong's iteration number does that), and a side must take no library events between its
/// last library send and the first baseline message it receives: the library would take that
/// message as its own. Completions of the library's own requests that the baseline's polls
/// find (the last library send's, or the peer's first library message after the switch back)
/// go to the event channel as if it had polled them.
///
/// Not thread-safe: use it only while no other thread uses the connection's event channel.
/// Receiving through a shared pool is not supported.
///
/// The corresponding C functions are `ibv_post_send`, `ibv_poll_cq` and `ibv_post_recv`.
package final class VerbsBaseline {
    private let connection: Connection
    private let queuePair: UnsafeMutablePointer<ibv_qp>
    private let completionQueue: UnsafeMutablePointer<ibv_cq>
    /// The address of each receive slot, by the slot number in the request id.
    private let slotAddresses: [UInt64]
    private let slotSize: UInt32
    private let localKey: UInt32
    private let sendAddress: UInt64
    private let messageSize: UInt32
    private let sendFlags: UInt32
    /// The block the baseline sends from, held for its lifetime.
    private let block: Int
    private let area: DMAArea
    private var completion = WorkCompletion()
    private var sendsInFlight = 0

    /// The request id of the baseline's sends: one the library never uses (its top two bits
    /// name a shared receive, which is never a send).
    private static let sendRequestID = UInt64.max

    /// Prepares `connection` (associated, with receive slots of its own) for baseline messages of
    /// `messageSize` bytes, at most the peer's slot size.
    package init(_ connection: Connection, messageSize: Int) throws(RDMAError) {
        let id = connection.id
        let setup = connection.events.state.withLock { state -> (QueuePair, DMAArea, [Int], Int)? in
            guard let core = state.connections.core(id.rawValue), core.pointee.status == .connected, core.pointee.pool == nil,
                  let queuePair = core.pointee.queuePair, let area = core.pointee.area
            else { return nil }
            return (queuePair, area, core.pointee.slotOffsets, core.pointee.slotSize)
        }
        guard let (queuePair, area, slotOffsets, slotSize) = setup else {
            throw RDMAError(.notConnected, operation: "verbs baseline", errno: .socketNotConnected,
                            message: "the connection must be associated with receive slots of its own (not a shared pool)")
        }
        guard messageSize > 0, messageSize <= connection.peerSlotSize else {
            throw RDMAError(.invalidArgument, operation: "verbs baseline", errno: .invalidArgument,
                            message: "a baseline message of \(messageSize) bytes does not fit the peer's \(connection.peerSlotSize)-byte slots")
        }
        self.connection = connection
        self.area = area
        self.queuePair = queuePair.pointer
        completionQueue = connection.events.completionQueue.pointer
        slotAddresses = slotOffsets.map { UInt64(UInt(bitPattern: area.address($0))) }
        self.slotSize = UInt32(slotSize)
        block = try area.allocate(messageSize, for: "verbs baseline")
        let segment = area.segment(at: block, count: messageSize)
        localKey = segment.localKey
        sendAddress = segment.address
        self.messageSize = UInt32(messageSize)
        // As the library sends: signalled, inline where the queue pair takes it.
        sendFlags = IBV_SEND_SIGNALED.rawValue | (messageSize <= queuePair.capabilities.maxInlineData ? IBV_SEND_INLINE.rawValue : 0)
    }

    deinit {
        area.free(block)
    }

    /// The buffer baseline messages go out of, for a caller that fills it.
    package var sendBuffer: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(bitPattern: UInt(sendAddress)), count: Int(messageSize))
    }

    /// Posts one message.
    ///
    /// The corresponding C function is `ibv_post_send`.
    package func send() throws(RDMAError) {
        var segment = ibv_sge(addr: sendAddress, length: messageSize, lkey: localKey)
        var request = ibv_send_wr()
        request.wr_id = Self.sendRequestID
        request.num_sge = 1
        request.opcode = IBV_WR_SEND_WITH_IMM
        request.imm_data = 0
        request.send_flags = sendFlags
        var bad: UnsafeMutablePointer<ibv_send_wr>? = nil
        let result = withUnsafeMutablePointer(to: &segment) { segment in
            request.sg_list = segment
            return ibv_post_send(queuePair, &request, &bad)
        }
        guard result == 0 else {
            throw RDMAError(.systemCall, operation: "ibv_post_send", errno: Errno(rawValue: result > 0 ? result : errno),
                            message: "the device refused a baseline send")
        }
        sendsInFlight += 1
    }

    /// Polls until the peer's next baseline message arrived and this side's sends completed;
    /// re-posts the message's slot and returns its length.
    ///
    /// The corresponding C functions are `ibv_poll_cq` and `ibv_post_recv`.
    package func receive() throws(RDMAError) -> Int {
        var length = -1
        while length < 0 || sendsInFlight > 0 {
            guard try pollOne() else { continue }
            if completion.requestID == Self.sendRequestID {
                try checkSuccess("a baseline send")
                sendsInFlight -= 1
            } else if length < 0, completion.isReceive, completion.isSuccess, completion.immediateData == 0,
                      ConnectionCore.kind(of: completion.requestID) == .receive {
                length = completion.byteCount
                try repost()
            } else {
                try forwardToLibrary()
            }
        }
        return length
    }

    /// Polls until this side's sends completed, handing whatever else the queue holds to the
    /// library: before the side goes back to the library.
    package func settle() throws(RDMAError) {
        while sendsInFlight > 0 {
            guard try pollOne() else { continue }
            if completion.requestID == Self.sendRequestID {
                try checkSuccess("a baseline send")
                sendsInFlight -= 1
            } else {
                try forwardToLibrary()
            }
        }
    }

    @inline(__always)
    private func pollOne() throws(RDMAError) -> Bool {
        let count = withUnsafeMutablePointer(to: &completion.raw) { ibv_poll_cq(completionQueue, 1, $0) }
        guard count >= 0 else {
            throw RDMAError(.systemCall, operation: "ibv_poll_cq", errno: .ioError, message: "polling the completion queue for the verbs baseline")
        }
        return count == 1
    }

    private func checkSuccess(_ what: String) throws(RDMAError) {
        guard completion.isSuccess else { throw RDMAError.workCompletion(completion, what) }
    }

    /// Re-posts the slot of the message just taken, under the request id the library gave it.
    private func repost() throws(RDMAError) {
        let slot = Int(UInt32(truncatingIfNeeded: completion.requestID))
        var segment = ibv_sge(addr: slotAddresses[slot], length: slotSize, lkey: localKey)
        var request = ibv_recv_wr()
        request.wr_id = completion.requestID
        request.num_sge = 1
        var bad: UnsafeMutablePointer<ibv_recv_wr>? = nil
        let result = withUnsafeMutablePointer(to: &segment) { segment in
            request.sg_list = segment
            return ibv_post_recv(queuePair, &request, &bad)
        }
        guard result == 0 else {
            throw RDMAError(.systemCall, operation: "ibv_post_recv", errno: Errno(rawValue: result > 0 ? result : errno),
                            message: "the device refused to take back a baseline message's slot")
        }
    }

    /// A completion of the library's own: handled as the event channel handles what it polls.
    private func forwardToLibrary() throws(RDMAError) {
        let events = connection.events
        withUnsafePointer(to: completion) { events.handle(polled: $0) }
        if !completion.isSuccess { try checkSuccess("a library request during the verbs baseline") }
    }
}
