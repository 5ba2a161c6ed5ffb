import CRDMA

/// A type-2 memory window: a remote key for one range of a memory region, granted on demand
/// and taken back, on one queue pair.
///
/// A region registered for local access only (plus ``AccessFlags/memoryWindowBind``) gives no
/// peer a standing key. To let the peer of a queue pair read one buffer, post a bind of a window
/// to exactly that buffer on that queue pair (``QueuePair/postBind(_:to:address:length:access:requestID:signaled:)``);
/// the key it returns is valid for that range, that access and that queue pair only, until it is
/// invalidated (``QueuePair/postLocalInvalidate(remoteKey:requestID:signaled:)``) or the window is
/// bound again. Each bind takes a new key (the low 8 bits count up), so a key handed out once is
/// never valid again after its window moved.
///
/// The window keeps its protection domain alive. The corresponding C functions are
/// `ibv_alloc_mw` (`IBV_MW_TYPE_2`) and `ibv_dealloc_mw`.
public final class MemoryWindow: @unchecked Sendable {
    // @unchecked Sendable: `pointer` is immutable; its key is read and advanced only by the one
    // who posts binds of the window (the owner of the queue pair's send queue, under its lock).
    public let protectionDomain: ProtectionDomain
    /// The underlying `struct ibv_mw *`.
    public let pointer: UnsafeMutablePointer<ibv_mw>

    /// The key of the last bind posted (or the initial key). A type-2 window's key is chosen by
    /// the consumer at each bind; the provider names the window by this key in the next bind,
    /// so ``QueuePair/postBind(_:to:address:length:access:requestID:signaled:)`` keeps it current.
    public var currentKey: UInt32 { pointer.pointee.rkey }

    /// Allocates a type-2 window in `protectionDomain`.
    ///
    /// The corresponding C function is `ibv_alloc_mw`.
    public init(protectionDomain: ProtectionDomain) throws(RDMAError) {
        let pointer = try nonNull("ibv_alloc_mw", "allocating a type-2 memory window (does the device support memory windows?)") {
            ibv_alloc_mw(protectionDomain.pointer, IBV_MW_TYPE_2)
        }
        self.protectionDomain = protectionDomain
        self.pointer = pointer
    }

    deinit {
        _ = ibv_dealloc_mw(pointer)
    }

    /// The key the next bind takes: the current one with its low 8 bits counted up.
    func nextKey() -> UInt32 { ibv_inc_rkey(pointer.pointee.rkey) }
}
