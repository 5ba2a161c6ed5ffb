import CRDMA
import SystemPackage

/// Memory registered with the device: pinned, and addressable by work requests through its
/// local key (and by remote peers through its remote key, when ``AccessFlags`` allow).
///
/// A region made with ``init(protectionDomain:length:access:hugePages:)`` owns its memory:
/// page-aligned, mapped once, deregistered and then unmapped exactly once when the region goes
/// away. One made with ``init(protectionDomain:unsafeRegistering:access:)`` registers memory
/// the caller owns and must keep alive longer than the region.
///
/// The region keeps its ``ProtectionDomain`` alive. Work requests that point into it must
/// complete before it is released: the layers above keep regions alive while their work
/// requests are in flight.
///
/// The corresponding C functions are `ibv_reg_mr` and `ibv_dereg_mr`.
public final class MemoryRegion: @unchecked Sendable {
    // @unchecked Sendable: every stored property is immutable after init (the pointers only
    // name the registration and its bytes); ibv_dereg_mr runs once, in deinit.
    public let protectionDomain: ProtectionDomain
    /// The underlying `struct ibv_mr *`.
    public let pointer: UnsafeMutablePointer<ibv_mr>
    /// The registered bytes.
    public let bytes: UnsafeMutableRawBufferPointer
    /// What the region was registered for.
    public let access: AccessFlags
    /// The memory, when this region owns it.
    private let ownedMemory: OwnedMemory?

    /// Allocates `length` bytes of page-aligned memory (rounded up to whole pages) and registers
    /// them.
    ///
    /// - Parameters:
    ///   - length: bytes to register; must be positive.
    ///   - access: the least that is needed by default: local write, no remote access.
    ///   - hugePages: back the region with 2 MiB huge pages (`MAP_HUGETLB`).
    /// - Throws: ``RDMAError/Code/memoryLockLimit`` naming the limit and how to raise it when
    ///   `RLIMIT_MEMLOCK` is too small; ``RDMAError/Code/invalidArgument`` for a bad length.
    ///
    /// The corresponding C functions are `mmap` and `ibv_reg_mr`.
    public convenience init(
        protectionDomain: ProtectionDomain, length: Int, access: AccessFlags = .sendReceive,
        hugePages: Bool = false
    ) throws(RDMAError) {
        guard length > 0 else {
            throw RDMAError.invalidArgument("ibv_reg_mr", "cannot register \(length) bytes: the size must be positive")
        }
        try Self.checkMemoryLockLimit(length)
        let memory = OwnedMemory(try PageAlignedMemory(length: length, hugePages: hugePages))
        try self.init(protectionDomain: protectionDomain, registering: memory.bytes, access: access, owner: memory)
    }

    /// Registers memory the caller owns.
    ///
    /// The memory must stay valid, and must not be unmapped or reallocated, until this region
    /// is gone and no work request that uses it is in flight.
    ///
    /// The corresponding C function is `ibv_reg_mr`.
    public convenience init(
        protectionDomain: ProtectionDomain, unsafeRegistering bytes: UnsafeMutableRawBufferPointer,
        access: AccessFlags = .sendReceive
    ) throws(RDMAError) {
        guard bytes.baseAddress != nil, bytes.count > 0 else {
            throw RDMAError.invalidArgument("ibv_reg_mr", "cannot register an empty buffer")
        }
        try Self.checkMemoryLockLimit(bytes.count)
        try self.init(protectionDomain: protectionDomain, registering: bytes, access: access, owner: nil)
    }

    private init(
        protectionDomain: ProtectionDomain, registering bytes: UnsafeMutableRawBufferPointer,
        access: AccessFlags, owner: OwnedMemory?
    ) throws(RDMAError) {
        self.protectionDomain = protectionDomain
        self.bytes = bytes
        self.access = access
        self.ownedMemory = owner
        do {
            pointer = try nonNull(
                "ibv_reg_mr",
                "registering \(formatBytes(bytes.count)) on \(protectionDomain.context.deviceName)"
            ) {
                crdma_reg_mr(protectionDomain.pointer, bytes.baseAddress, bytes.count, access.rawValue)
            }
        } catch {
            // Pinning failed for lack of lockable memory: say which limit and how to raise it.
            let limit = MemoryLockLimit.current()
            if error.errno == .noMemory || error.errno == .notPermitted,
                limit.bytes != nil, !limit.hasIPCLockCapability
            {
                throw RDMAError(
                    .memoryLockLimit, operation: "ibv_reg_mr", errno: error.errno,
                    message: limit.advice(forRegistering: bytes.count))
            }
            throw error
        }
    }

    deinit {
        let result = ibv_dereg_mr(pointer)
        assert(result == 0, "ibv_dereg_mr failed: \(result)")
        // ownedMemory is released after this, so the pages are unmapped after deregistration.
    }

    /// The local key that work requests use to name this region.
    public var localKey: UInt32 { pointer.pointee.lkey }
    /// The remote key that peers use for RDMA read/write into this region.
    public var remoteKey: UInt32 { pointer.pointee.rkey }

    /// A scatter-gather element for `length` bytes at `offset` inside the region.
    ///
    /// Throws ``RDMAError/Code/invalidArgument`` unless the range lies inside the region.
    public func segment(offset: Int, length: Int) throws(RDMAError) -> ScatterGatherElement {
        guard offset >= 0, length >= 0, offset <= bytes.count, length <= bytes.count - offset,
            length <= Int(UInt32.max)
        else {
            throw RDMAError.invalidArgument(
                "ibv_sge",
                "range of \(length) bytes at offset \(offset) is outside the \(formatBytes(bytes.count)) region")
        }
        return ScatterGatherElement(
            address: UInt64(UInt(bitPattern: bytes.baseAddress! + offset)), length: UInt32(length),
            localKey: localKey)
    }

    /// Whether `address ..< address + length` lies inside the region.
    public func contains(_ address: UnsafeRawPointer, length: Int) -> Bool {
        let start = UnsafeRawPointer(bytes.baseAddress!)
        return address >= start && length >= 0 && address - start <= bytes.count - length
    }

    /// Refuses a registration that `RLIMIT_MEMLOCK` would refuse, before trying it.
    private static func checkMemoryLockLimit(_ length: Int) throws(RDMAError) {
        let limit = MemoryLockLimit.current()
        guard limit.allows(pinning: length) else {
            throw RDMAError(
                .memoryLockLimit, operation: "ibv_reg_mr", errno: .noMemory,
                message: limit.advice(forRegistering: length))
        }
    }
}

/// Page-aligned memory behind a class reference, so a region can own it.
private final class OwnedMemory: @unchecked Sendable {
    // @unchecked Sendable: the memory is immutable after init (its bytes are shared with the
    // device, which is why the region exists) and freed once, in deinit.
    let memory: PageAlignedMemory
    var bytes: UnsafeMutableRawBufferPointer { memory.bytes }
    init(_ memory: consuming PageAlignedMemory) { self.memory = memory }
}
