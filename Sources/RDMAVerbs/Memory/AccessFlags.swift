import CRDMA

/// What the device and remote peers may do with a memory region or queue pair.
///
/// The default is the least: the local device may write into the region (needed to receive)
/// and nothing remote is allowed. Remote read, write and atomic access are granted only when
/// asked for.
///
/// The corresponding C type is `enum ibv_access_flags`.
public struct AccessFlags: OptionSet, Sendable, Hashable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// The local device may write into the region (receives land there).
    public static let localWrite = AccessFlags(rawValue: Int32(IBV_ACCESS_LOCAL_WRITE.rawValue))
    /// A remote peer may RDMA-write into the region (implies ``localWrite``).
    public static let remoteWrite = AccessFlags(rawValue: Int32(IBV_ACCESS_REMOTE_WRITE.rawValue))
    /// A remote peer may RDMA-read from the region.
    public static let remoteRead = AccessFlags(rawValue: Int32(IBV_ACCESS_REMOTE_READ.rawValue))
    /// A remote peer may perform atomic operations on the region (implies ``localWrite``).
    public static let remoteAtomic = AccessFlags(rawValue: Int32(IBV_ACCESS_REMOTE_ATOMIC.rawValue))

    /// Memory windows may be bound to the region (``MemoryWindow``): remote access is then
    /// granted per window, for one range and one queue pair, never by the region itself.
    public static let memoryWindowBind = AccessFlags(rawValue: Int32(IBV_ACCESS_MW_BIND.rawValue))

    /// Everything a region needs for sends and receives, and no remote access.
    public static let sendReceive: AccessFlags = [.localWrite]

    /// Whether a remote peer may touch memory under these flags.
    public var grantsRemoteAccess: Bool {
        !intersection([.remoteWrite, .remoteRead, .remoteAtomic]).isEmpty
    }
}
