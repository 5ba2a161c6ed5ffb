import CDMAIO
import DMAIO
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

/// The place of one DMA area in the registry: made once, never freed, reused by the next
/// dma_alloc once the area is freed (with the next generation).
final class AreaSlot: Sendable {
    let index: Int
    /// The area and what the program holds of it (see ``AreaState``).
    let state = Locked(SlotState())

    struct SlotState: ~Copyable {
        /// Counts the areas this slot has held; the handle of the allocated one carries it.
        var generation: UInt32 = 0
        var open: AreaState?
    }

    init(index: Int) { self.index = index }

    /// dma_alloc: the slot holds `area` from now on, under the next generation.
    func open(_ area: DMAArea) -> AreaReference {
        let generation = state.withLock { state -> UInt32 in
            // 0 is no handle's; a slot at UInt32.max is retired (never back on the free list).
            state.generation += 1
            state.open = AreaState(area: area)
            return state.generation
        }
        return AreaReference(slot: self, generation: generation)
    }

    /// dma_free: EBUSY while sockets use the area or the program holds received buffers of it.
    func close(_ generation: UInt32) throws(Failure) {
        try state.withLock { state throws(Failure) in
            guard state.generation == generation, let open = state.open else { throw .unknownArea("dma_free") }
            guard open.sockets == 0 else {
                throw Failure(EBUSY, "dma_free: \(open.sockets) socket(s) associated with the area are still open: sio_close them first")
            }
            guard open.held.isEmpty else {
                throw Failure(EBUSY, "dma_free: the program still holds \(open.held.count) received buffer(s) of the area: release them first (sio_release or sio_release_buffer)")
            }
            for (offset, _) in open.reserved { open.area.free(offset) }
            open.reserved = [:]
            state.open = nil
        }
    }
}

/// An area as a call holds it: its slot and the generation its handle named.
struct AreaReference: Sendable {
    let slot: AreaSlot
    let generation: UInt32

    /// The `dma_mem_t` the program holds.
    var handle: UInt { SlotHandle.make(.area, index: slot.index, generation: generation) }

    /// Runs `body` with the allocated area, its lock held; EINVAL when it was freed.
    func withOpen<T: Sendable>(_ operation: String, _ body: (AreaState) throws(Failure) -> T) throws(Failure) -> T {
        try slot.state.withLock { state throws(Failure) -> T in
            guard state.generation == generation, let open = state.open else { throw .unknownArea(operation) }
            return try body(open)
        }
    }
}

/// A DMA area and what the C program holds of it: what its lock guards.
final class AreaState {
    let area: DMAArea
    /// Reserved, unsent buffers: block offset → bytes reserved.
    var reserved: [Int: Int] = [:]
    /// Received messages handed out and not yet released, by address.
    var held: [UInt: HeldMessage] = [:]
    /// The order they were handed out in, for the FIFO `sio_release`; entries whose message
    /// was released out of order are skipped (their serial no longer matches).
    var heldOrder = RingBuffer<(address: UInt, serial: UInt64)>(capacity: 64)
    /// Bytes of held messages not yet released.
    var heldBytes = 0
    var nextSerial: UInt64 = 0
    /// Sockets associated with the area, or being associated with it.
    var sockets = 0

    struct HeldMessage {
        var message: DetachedMessage
        var serial: UInt64
        /// Bytes already released by a FIFO `sio_release` that ended inside the message.
        var consumed: Int
    }

    init(area: DMAArea) {
        self.area = area
        reserved.reserveCapacity(64)
        held.reserveCapacity(64)
    }

    /// Keeps a received message for the program.
    func hold(_ message: DetachedMessage) -> UnsafeRawPointer {
        let address = UInt(bitPattern: message.bytes.baseAddress!)
        nextSerial += 1
        held[address] = HeldMessage(message: message, serial: nextSerial, consumed: 0)
        heldOrder.append((address, nextSerial))
        heldBytes += message.bytes.count
        return message.bytes.baseAddress!
    }

    /// Drops order entries of messages already released out of order.
    func trimHeldOrder() {
        while let front = heldOrder.front, held[front.address]?.serial != front.serial { _ = heldOrder.popFirst() }
    }
}
