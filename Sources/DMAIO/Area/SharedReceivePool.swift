import RDMAVerbs
import Synchronization

/// Receive slots in a ``DMAArea`` that several connections share through one shared receive
/// queue (`ibv_create_srq`): one pool of buffers serves many peers.
///
/// Each connection associated with the pool (``Connection/associate(_:credits:timeout:)``)
/// claims the slots its credits need, so the credit protocol still guarantees that no message
/// meets an empty queue; which slot a message lands in is up to the device.
///
/// The corresponding C functions are `ibv_create_srq` and `ibv_post_srq_recv`.
public final class SharedReceivePool: Sendable {
    public let area: DMAArea
    /// The size of each slot: the largest message a peer may send.
    public let slotSize: Int
    /// The number of slots.
    public var slotCount: Int { slotOffsets.count }
    let queue: SharedReceiveQueue
    let slotOffsets: [Int]
    private let claimed = Locked(0)

    /// Carves `receiveBytes / slotSize` slots out of `area` and posts them all on a new shared
    /// receive queue.
    ///
    /// - Throws: ``RDMAError/Code/invalidArgument`` for a slot size that is not a power of two
    ///   from 64 B to 1 GiB or fewer than 2 slots; ``RDMAError/Code/areaExhausted`` when the
    ///   area cannot hold them.
    public init(area: DMAArea, receiveBytes: Int, slotSize: Int = 64 << 10) throws(RDMAError) {
        try Self.checkSlotSize(slotSize)
        let count = receiveBytes / slotSize
        guard count >= 2 else {
            throw RDMAError(.invalidArgument, operation: "dma_assoc", errno: .invalidArgument,
                            message: "\(receiveBytes) receive bytes make \(count) slots of \(slotSize) bytes; a shared pool needs at least 2")
        }
        self.area = area
        self.slotSize = slotSize
        var offsets: [Int] = []
        do throws(RDMAError) {
            for _ in 0..<count { offsets.append(try area.allocate(slotSize, for: "dma_assoc")) }
            queue = try SharedReceiveQueue(protectionDomain: area.protectionDomain, capacity: count)
        } catch {
            for offset in offsets { area.free(offset) }
            throw error
        }
        slotOffsets = offsets
        for slot in 0..<count { try repost(slot: slot) }
    }

    deinit {
        for offset in slotOffsets { area.free(offset) }
    }

    /// Slots not yet claimed by a connection.
    public var unclaimedSlots: Int { claimed.withLock { slotCount - $0 } }

    func claim(_ slots: Int) throws(RDMAError) {
        try claimed.withLock { claimed throws(RDMAError) in
            guard claimed + slots <= slotCount else {
                throw RDMAError(.areaExhausted, operation: "dma_assoc", errno: .noSpace,
                                message: "the shared pool has \(slotCount - claimed) unclaimed slots, this connection needs \(slots) "
                                    + "(its credits plus room for the peer's credit updates): give it fewer credits or make a larger pool")
            }
            claimed += slots
        }
    }

    func unclaim(_ slots: Int) {
        claimed.withLock { $0 -= slots }
    }

    /// Posts slot `slot` on the shared receive queue.
    func repost(slot: Int) throws(RDMAError) {
        let segment = try area.region.segment(offset: slotOffsets[slot], length: slotSize)
        try queue.postReceive(segment, requestID: ConnectionCore.RequestKind.sharedReceive.rawValue << 62 | UInt64(slot))
    }

    static func checkSlotSize(_ slotSize: Int) throws(RDMAError) {
        guard slotSize >= 64, slotSize & (slotSize - 1) == 0, slotSize <= 1 << 30 else {
            throw RDMAError(.invalidArgument, operation: "dma_assoc", errno: .invalidArgument,
                            message: "slotSize must be a power of two between 64 B and 1 GiB, not \(slotSize)")
        }
    }
}
