import CRDMA

/// One contiguous piece of registered memory that a work request reads from or writes into.
///
/// Made by ``MemoryRegion/segment(offset:length:)``, which checks that the piece lies inside
/// the region.
///
/// The corresponding C structure is `struct ibv_sge`.
public struct ScatterGatherElement: Sendable, Hashable {
    /// The virtual address of the first byte.
    public let address: UInt64
    /// The number of bytes.
    public let length: UInt32
    /// The local key of the region the bytes belong to.
    public let localKey: UInt32

    /// An element from raw parts, unchecked: the bytes must lie inside the registered region
    /// that `localKey` names, or be sent inline (where the key is ignored and the bytes are
    /// copied at post time). Prefer ``MemoryRegion/segment(offset:length:)``.
    public init(address: UInt64, length: UInt32, localKey: UInt32) {
        self.address = address
        self.length = length
        self.localKey = localKey
    }

    var raw: ibv_sge { ibv_sge(addr: address, length: length, lkey: localKey) }
}
