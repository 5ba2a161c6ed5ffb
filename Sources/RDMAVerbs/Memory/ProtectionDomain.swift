import CRDMA

/// A protection domain: the scope inside which memory regions and queue pairs may be used
/// together.
///
/// Holds its ``Context`` alive; memory regions, queue pairs and shared receive queues made on
/// it hold it alive in turn, so it is deallocated after all of them, exactly once.
///
/// The corresponding C functions are `ibv_alloc_pd` and `ibv_dealloc_pd`.
public final class ProtectionDomain: @unchecked Sendable {
    // @unchecked Sendable: the pointer is immutable after init; libibverbs' calls on a
    // protection domain are thread-safe.
    public let context: Context
    /// The underlying `struct ibv_pd *`.
    public let pointer: UnsafeMutablePointer<ibv_pd>

    /// Allocates a protection domain on the device.
    ///
    /// The corresponding C function is `ibv_alloc_pd`.
    public init(context: Context) throws(RDMAError) {
        self.context = context
        pointer = try nonNull("ibv_alloc_pd", "allocating a protection domain on \(context.deviceName)") {
            ibv_alloc_pd(context.pointer)
        }
    }

    deinit {
        let result = ibv_dealloc_pd(pointer)
        assert(result == 0, "ibv_dealloc_pd failed: \(result)")
    }
}
