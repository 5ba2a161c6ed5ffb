import RDMAVerbs
import Synchronization

/// A DMA area — the proposal's `dma_alloc`: memory the network device reads and writes
/// directly, allocated and registered once.
///
/// The area is page-aligned memory registered with the device (`ibv_reg_mr` on a protection
/// domain of its own). Send buffers are reserved inside it with ``reserve(_:)`` (the proposal's
/// `sio_reserve`); associating a connection (``Connection/associate(_:receiveBytes:slotSize:timeout:)``,
/// `dma_assoc`) carves receive slots out of it. Neither touches the kernel or the heap per
/// buffer: a buddy allocator hands out blocks of the registered memory.
///
/// The application never sees the area's addresses except through the buffers handed to it.
///
/// ```swift
/// let area = try DMAArea(size: 16 << 20)        // dma_alloc
/// var buffer = try area.reserve(4096)           // sio_reserve
/// buffer.withUnsafeMutableBytes { fill($0) }
/// try connection.send(buffer, cookie: 1)        // aio_send: the buffer comes back when sent
/// ```
///
/// The corresponding C calls are `mmap`, `ibv_alloc_pd` and `ibv_reg_mr`.
public final class DMAArea: Sendable {
    /// The registered bytes.
    public let size: Int
    let context: Context
    let protectionDomain: ProtectionDomain
    let region: MemoryRegion
    /// The region's first byte (as an integer, which is `Sendable`: the area hands out its
    /// bytes only through buffers that own them) and local key, kept beside it for the data path.
    private let baseAddress: UInt
    private let localKey: UInt32
    private let allocator: Locked<BuddyAllocator>
    /// Messages handed out by ``Connection/receiveRetained()``, oldest first, for
    /// ``releaseOldest(bytes:)``.
    let retained = Locked(RetainedMessages())

    struct RetainedMessages: ~Copyable {
        struct Entry {
            var message: DetachedMessage
            /// Keeps the message's channel alive while the message is held here.
            var channel: EventChannel
            var length: Int { message.bytes.count }
        }
        var entries = RingBuffer<Entry>()
        /// Bytes of the oldest entry already released.
        var consumedOfOldest = 0
        var totalBytes = 0
    }

    /// The smallest block the area hands out; smaller reservations are rounded up to it.
    public static let minimumBlock = 256

    /// Allocates and registers an area of `size` bytes.
    ///
    /// - Parameters:
    ///   - size: bytes, at least 4 KiB; rounded up to whole pages.
    ///   - hugePages: back the area with 2 MiB huge pages (they must be reserved first).
    ///   - device: the RDMA device, by name; by default the first. Connections associated with
    ///     the area must run over the same device.
    /// - Throws: ``RDMAError/Code/invalidArgument`` for a bad size,
    ///   ``RDMAError/Code/memoryLockLimit`` when `RLIMIT_MEMLOCK` is too small (the message says
    ///   how to raise it), ``RDMAError/Code/noDevice`` without an RDMA device.
    ///
    /// The corresponding C calls are `mmap`, `ibv_alloc_pd` and `ibv_reg_mr`.
    public init(size: Int, hugePages: Bool = false, device: String? = nil) throws(RDMAError) {
        guard size >= 4096 else {
            throw RDMAError(.invalidArgument, operation: "dma_alloc", errno: .invalidArgument,
                            message: "an area needs at least 4096 bytes, not \(size)")
        }
        context = try Context.connectionManagerContext(deviceName: device)
        protectionDomain = try ProtectionDomain(context: context)
        // Local access, and memory windows may be bound to it (a large message's sender lends
        // the peer one buffer, for one read: docs/large-messages.md); no remote access itself.
        region = try MemoryRegion(protectionDomain: protectionDomain, length: size, access: [.localWrite, .memoryWindowBind], hugePages: hugePages)
        self.size = region.bytes.count
        baseAddress = UInt(bitPattern: region.bytes.baseAddress!)
        localKey = region.localKey
        allocator = Locked(BuddyAllocator(capacity: region.bytes.count, minimumBlock: Self.minimumBlock))
    }

    /// The name of the device the area is registered with.
    public var deviceName: String { context.deviceName }

    /// Bytes currently reserved (in-flight sends, unsent buffers, receive slots), in whole blocks.
    public var bytesInUse: Int { allocator.withLock { $0.bytesInUse } }

    /// Reserves a send buffer of exactly `count` bytes — the proposal's `sio_reserve`.
    ///
    /// No system call and no heap allocation: a block of the registered area is taken from its
    /// allocator. The buffer returns to the area when the send that consumes it completes, or
    /// when it is dropped unsent.
    ///
    /// - Throws: ``RDMAError/Code/invalidArgument`` for a zero size or one larger than the
    ///   area; ``RDMAError/Code/areaExhausted`` when no free block is large enough.
    public func reserve(_ count: Int) throws(RDMAError) -> SendBuffer {
        let offset = try allocate(count, for: "sio_reserve")
        return SendBuffer(area: self, offset: offset, count: count)
    }

    /// Releases the oldest `bytes` bytes of received data — the proposal's
    /// `sio_release(handle, size)`, which treats what arrived as one ring: messages taken with
    /// ``Connection/receiveRetained()`` are consumed oldest first, across the area's
    /// connections, and each slot goes back to its connection (re-posted, a credit returned)
    /// once all its bytes are released. Part of a message may be released; its slot waits for
    /// the rest.
    ///
    /// - Throws: ``RDMAError/Code/invalidArgument`` (releasing nothing) for 0 bytes or more
    ///   than the retained messages hold.
    public func releaseOldest(bytes: Int) throws(RDMAError) {
        // Lock order: the area's retained list, then a connection's event channel (never the
        // other way round).
        try retained.withLock { retained throws(RDMAError) in
            let held = retained.totalBytes - retained.consumedOfOldest
            guard bytes > 0, bytes <= held else {
                throw RDMAError(.invalidArgument, operation: "sio_release", errno: .invalidArgument,
                                message: bytes <= 0
                                    ? "cannot release \(bytes) bytes: the size must be positive"
                                    : "cannot release \(bytes) bytes: only \(held) received bytes are held")
            }
            var left = bytes
            while left > 0, let oldest = retained.entries.front {
                let take = Swift.min(left, oldest.length - retained.consumedOfOldest)
                left -= take
                retained.consumedOfOldest += take
                if retained.consumedOfOldest == oldest.length {
                    _ = retained.entries.popFirst()
                    retained.totalBytes -= oldest.length
                    retained.consumedOfOldest = 0
                    oldest.message.release()
                }
            }
        }
    }

    /// Received bytes handed out by ``Connection/receiveRetained()`` and not yet released.
    public var retainedBytes: Int { retained.withLock { $0.totalBytes - $0.consumedOfOldest } }

    /// Takes a block of at least `count` bytes; returns its offset.
    ///
    /// Inlined, with the allocator's own `allocate`, into `sio_reserve`: it runs for every
    /// message, and under emulation a call costs as much as a few dozen instructions
    /// (docs/benchmark/latency-64B-anatomy.md). Its refusals are built out of line, so that
    /// every caller does not carry them.
    @inline(__always)
    package func allocate(_ count: Int, for operation: String) throws(RDMAError) -> Int {
        guard count > 0, count <= size, let offset = allocator.withLock({ $0.allocate(count) }) else {
            throw allocationRefused(count, for: operation)
        }
        return offset
    }

    /// A block of `count` bytes, or nil when the area has none that large now (a large
    /// message's read waits for room this way, without building an error each time).
    package func tryAllocate(_ count: Int) -> Int? {
        guard count > 0, count <= size else { return nil }
        return allocator.withLock { $0.allocate(count) }
    }

    /// Why ``allocate(_:for:)`` could not serve `count` bytes.
    @inline(never)
    private func allocationRefused(_ count: Int, for operation: String) -> RDMAError {
        guard count > 0 else {
            return RDMAError(.invalidArgument, operation: operation, errno: .invalidArgument,
                             message: "cannot reserve 0 bytes: the size must be positive")
        }
        guard count <= size else {
            return RDMAError(.invalidArgument, operation: operation, errno: .invalidArgument,
                             message: "cannot reserve \(count) bytes from an area of \(size) bytes: the buffer must fit in the area")
        }
        // A full area is back-pressure, met on the data path: the message is a literal, so the
        // error allocates nothing (bytesInUse tells how full the area is).
        return RDMAError(.areaExhausted, operation: operation, errno: .noMemory,
                         message: "the area has no free block that large: in-flight sends, unsent buffers and receive slots hold it; take send completions (events) and try again, or allocate a larger area")
    }

    /// Returns a block to the area. Inlined, as ``allocate(_:for:)`` is: `aio_send` frees an
    /// inline message's block right after posting it.
    @inline(__always)
    package func free(_ offset: Int) {
        let freed = allocator.withLock { $0.free(offset) }
        assert(freed, "block at offset \(offset) freed twice")
    }

    /// The address of `offset` inside the area.
    @inline(__always)
    package func address(_ offset: Int) -> UnsafeMutableRawPointer {
        UnsafeMutableRawPointer(bitPattern: baseAddress &+ UInt(bitPattern: offset)).unsafelyUnwrapped
    }

    /// The scatter-gather element for `count` bytes at `offset`, a block (or part of one) that
    /// the area's allocator handed out: inside the region by construction, so unchecked, unlike
    /// `MemoryRegion.segment(offset:length:)`.
    @inline(__always)
    func segment(at offset: Int, count: Int) -> ScatterGatherElement {
        ScatterGatherElement(address: UInt64(baseAddress &+ UInt(bitPattern: offset)), length: UInt32(truncatingIfNeeded: count), localKey: localKey)
    }

    /// The offset of `pointer` inside the area, or nil when it lies outside.
    package func offset(of pointer: UnsafeRawPointer) -> Int? {
        let start = UnsafeRawPointer(region.bytes.baseAddress!)
        guard pointer >= start, pointer < start + size else { return nil }
        return pointer - start
    }

    /// Whether `pointer ..< pointer + count` lies inside the area.
    public func contains(_ pointer: UnsafeRawPointer, count: Int) -> Bool {
        region.contains(pointer, length: count)
    }
}
