import CDMAIO
import DMAIO
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

/// Everything the C ABI hands out, by handle or descriptor. C programs hold integers and raw
/// pointers; the registry maps them back to the Swift objects, so that an unknown or freed
/// handle is an error (EINVAL, EBADF), never a crash.
///
/// There is no process-wide lock: calls on different channels and areas run in parallel, as
/// the header promises.
/// - Finding what a handle or descriptor names takes no lock: lock-free tables
///   (handle_tables.c) hold slot objects that are never freed, and a handle carries its slot's
///   generation, so a freed handle stays unknown even after its slot is reused.
/// - A channel's lock (``ChannelSlot/state``) guards the channel and every socket bound to it:
///   each socket call takes its channel's lock, and no call holds two channels' locks.
/// - An area's lock (``AreaSlot/state``) guards what the program holds of the area; it is taken
///   alone or inside a channel's lock, never around another lock.
/// - A channel's inbox lock (``ChannelSlot/inbox``) guards its queue of translated events; it is
///   taken alone or inside another lock, never around one, so that any channel can deliver to any
///   other (an aiocb's `aio_ec`).
/// - `control` is taken by ec_create, ec_destroy, dma_alloc and dma_free only (around channel,
///   area and inbox locks).
/// Calls that block (dma_assoc, sio_accept, sio_connect, ec_delay's sleep) hold no lock.
final class Registry: Sendable {
    static let shared = Registry()

    /// Every slot ever made (they are never freed: the tables point at them) and the free ones.
    private struct Control: ~Copyable {
        var channelSlots: [ChannelSlot] = []
        var freeChannelSlots: [Int] = []
        var areaSlots: [AreaSlot] = []
        var freeAreaSlots: [Int] = []
    }

    private let control = Locked(Control())

    // MARK: Channels

    /// The channel `handle` names; whether it is still open is checked under its lock.
    func channel(_ handle: OpaquePointer?, _ operation: String) throws(Failure) -> ChannelReference {
        guard let handle, let reference = Self.channel(UInt(bitPattern: handle)) else { throw .unknownChannel(operation) }
        return reference
    }

    private static func channel(_ handle: UInt) -> ChannelReference? {
        guard let (index, generation) = SlotHandle.parse(handle, .channel), let slot = channelSlot(index) else { return nil }
        return ChannelReference(slot: slot, generation: generation)
    }

    private static func channelSlot(_ index: Int) -> ChannelSlot? {
        let word = dmaio_table_get(DMAIO_TABLE_CHANNELS, UInt32(index))
        guard let pointer = UnsafeRawPointer(bitPattern: UInt(word)) else { return nil }
        return Unmanaged<ChannelSlot>.fromOpaque(pointer).takeUnretainedValue()
    }

    /// ec_create: opens a channel in a free slot.
    func openChannel(_ channel: EventChannel, pollDescriptor: Int32, wakeDescriptor: Int32) throws(Failure) -> ChannelReference {
        try control.withLock { control throws(Failure) -> ChannelReference in
            guard let slot = Self.freeSlot(&control.channelSlots, free: &control.freeChannelSlots, table: DMAIO_TABLE_CHANNELS,
                                           make: ChannelSlot.init(index:)) else {
                throw Failure(ENOMEM, "ec_create: no room for another event channel (\(control.channelSlots.count) are open)")
            }
            return slot.open(channel, pollDescriptor: pollDescriptor, wakeDescriptor: wakeDescriptor)
        }
    }

    /// ec_destroy: closes the channel (EBUSY while sockets are bound to it) and forgets it as a
    /// source of the others. The channel's own lock is taken (and may be waited for: a
    /// sio_close draining) before, not inside, `control`, which other channels' calls need.
    func closeChannel(_ reference: ChannelReference) throws(Failure) {
        let pollDescriptor = try reference.slot.close(reference.generation)
        control.withLock { control in
            for other in control.channelSlots where other !== reference.slot {
                other.inbox.withLock { $0.forgetSource(reference) }
            }
            // libc's close itself: the program's descriptors are guarded (close_guard.c).
            _ = dmaio_real_close(pollDescriptor)
            // A slot whose generation is spent is retired: its handles are never given out again.
            if reference.generation < UInt32.max { control.freeChannelSlots.append(reference.slot.index) }
        }
    }

    // MARK: Areas

    /// The area `handle` names; whether it is still allocated is checked under its lock.
    func area(_ handle: OpaquePointer?, _ operation: String) throws(Failure) -> AreaReference {
        guard let handle, let (index, generation) = SlotHandle.parse(UInt(bitPattern: handle), .area) else { throw .unknownArea(operation) }
        let word = dmaio_table_get(DMAIO_TABLE_AREAS, UInt32(index))
        guard let pointer = UnsafeRawPointer(bitPattern: UInt(word)) else { throw .unknownArea(operation) }
        return AreaReference(slot: Unmanaged<AreaSlot>.fromOpaque(pointer).takeUnretainedValue(), generation: generation)
    }

    /// dma_alloc: records the area in a free slot.
    func openArea(_ area: DMAArea) throws(Failure) -> AreaReference {
        try control.withLock { control throws(Failure) -> AreaReference in
            guard let slot = Self.freeSlot(&control.areaSlots, free: &control.freeAreaSlots, table: DMAIO_TABLE_AREAS,
                                           make: AreaSlot.init(index:)) else {
                throw Failure(ENOMEM, "dma_alloc: no room for another area (\(control.areaSlots.count) are allocated)")
            }
            return slot.open(area)
        }
    }

    /// A free slot of `slots` (`control` locked): one freed before, or a new one, made and
    /// published in `table` under its index. Nil when the table has no room for it.
    private static func freeSlot<Slot: AnyObject>(_ slots: inout [Slot], free: inout [Int], table: dmaio_table,
                                                  make: (Int) -> Slot) -> Slot? {
        if let index = free.popLast() { return slots[index] }
        let slot = make(slots.count)
        guard dmaio_table_set(table, UInt32(slots.count), UInt64(UInt(bitPattern: Unmanaged.passUnretained(slot).toOpaque()))) else {
            return nil
        }
        slots.append(slot)
        return slot
    }

    /// dma_free: frees the area (EBUSY while sockets use it or the program holds its buffers).
    func closeArea(_ reference: AreaReference) throws(Failure) {
        try reference.slot.close(reference.generation)
        control.withLock { control in
            // A slot whose generation is spent is retired: its handles are never given out again.
            if reference.generation < UInt32.max { control.freeAreaSlots.append(reference.slot.index) }
        }
    }

    // MARK: Sockets

    /// The channel the DMAIO socket `descriptor` is bound to, if it is one.
    func socketChannel(_ descriptor: Int32) -> ChannelReference? {
        guard descriptor >= 0 else { return nil }
        let word = dmaio_table_get(DMAIO_TABLE_SOCKETS, UInt32(descriptor))
        return word == 0 ? nil : Self.channel(UInt(word))
    }

    /// Runs `body` with the socket `descriptor` and its channel, the channel's lock held; EBADF
    /// when the descriptor is not a DMAIO socket.
    func withSocket<T: Sendable>(_ descriptor: Int32, _ operation: String,
                                 _ body: (ChannelState, SocketState) throws(Failure) -> T) throws(Failure) -> T {
        var reference = socketChannel(descriptor)
        while let channel = reference {
            let result = try channel.slot.state.withLock { state throws(Failure) -> T? in
                guard state.generation == channel.generation, let open = state.open, let socket = open.sockets[descriptor] else { return nil }
                return try body(open, socket)
            }
            if let result { return result }
            // Closed meanwhile, perhaps reused for a socket of another channel: look again.
            let again = socketChannel(descriptor)
            guard let again, again.slot !== channel.slot || again.generation != channel.generation else { break }
            reference = again
        }
        throw Failure(EBADF, "\(operation): descriptor \(descriptor) is not a DMAIO socket (ec_bind and dma_assoc a TCP socket, or use sio_connect / sio_accept)")
    }
}

/// What a handle names, in its top byte: a channel's handle is no area's.
enum HandleKind: UInt {
    case channel = 0xEC
    case area = 0xDA
}

/// An `ec_t` or `dma_mem_t` as the program holds it: its kind (bits 56-63), its slot's
/// generation (bits 24-55) and its slot's index + 1 (bits 0-23). Never a null pointer.
enum SlotHandle {
    static func make(_ kind: HandleKind, index: Int, generation: UInt32) -> UInt {
        kind.rawValue << 56 | UInt(generation) << 24 | UInt(index + 1)
    }

    static func parse(_ value: UInt, _ kind: HandleKind) -> (index: Int, generation: UInt32)? {
        guard value >> 56 == kind.rawValue, value & 0xFF_FFFF != 0 else { return nil }
        return (Int(value & 0xFF_FFFF) - 1, UInt32(truncatingIfNeeded: value >> 24))
    }

    static func pointer(_ value: UInt) -> OpaquePointer { OpaquePointer(bitPattern: value)! }
}

/// The device the C program asked for through the environment, if any.
var environmentDevice: String? {
    guard let value = getenv("DMAIO_DEVICE"), value.pointee != 0 else { return nil }
    return String(cString: value)
}
