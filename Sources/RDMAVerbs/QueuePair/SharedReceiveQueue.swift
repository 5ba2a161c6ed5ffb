import CRDMA

/// A shared receive queue: one pool of receive work requests that several queue pairs draw
/// from, so that one set of receive buffers serves many connections.
///
/// Keeps its protection domain alive; queue pairs using it keep it alive.
///
/// The corresponding C functions are `ibv_create_srq` and `ibv_destroy_srq`.
public final class SharedReceiveQueue: @unchecked Sendable {
    // @unchecked Sendable: the stored properties are immutable after init; ibv_post_srq_recv
    // takes the provider's queue lock.
    public let protectionDomain: ProtectionDomain
    /// The underlying `struct ibv_srq *`.
    public let pointer: UnsafeMutablePointer<ibv_srq>
    /// Receive work requests the queue holds, as the device granted.
    public let capacity: Int
    /// Scatter-gather elements per receive.
    public let maxSegments: Int

    /// Creates a shared receive queue holding up to `capacity` receive requests.
    ///
    /// The corresponding C function is `ibv_create_srq`.
    public init(protectionDomain: ProtectionDomain, capacity: Int, maxSegments: Int = 1) throws(RDMAError) {
        guard capacity > 0, capacity <= Int(UInt32.max), maxSegments > 0, maxSegments <= Int(UInt32.max) else {
            throw RDMAError.invalidArgument(
                "ibv_create_srq", "a shared receive queue needs a positive capacity and segment count, not \(capacity) and \(maxSegments)")
        }
        var attributes = ibv_srq_init_attr()
        attributes.attr.max_wr = UInt32(capacity)
        attributes.attr.max_sge = UInt32(maxSegments)
        self.protectionDomain = protectionDomain
        pointer = try nonNull(
            "ibv_create_srq",
            "creating a shared receive queue of \(capacity) requests on \(protectionDomain.context.deviceName)"
        ) {
            ibv_create_srq(protectionDomain.pointer, &attributes)
        }
        self.capacity = Int(attributes.attr.max_wr)
        self.maxSegments = Int(attributes.attr.max_sge)
    }

    deinit {
        let result = ibv_destroy_srq(pointer)
        assert(result == 0, "ibv_destroy_srq failed: \(result)")
    }

    /// Posts a receive into one piece of registered memory.
    ///
    /// The corresponding C function is `ibv_post_srq_recv`.
    @inline(__always)
    public func postReceive(_ segment: ScatterGatherElement, requestID: UInt64) throws(RDMAError) {
        var sge = segment.raw
        var request = ibv_recv_wr()
        request.wr_id = requestID
        request.num_sge = 1
        var bad: UnsafeMutablePointer<ibv_recv_wr>? = nil
        try withUnsafeMutablePointer(to: &sge) { sge throws(RDMAError) in
            request.sg_list = sge
            try zeroOrErrno("ibv_post_srq_recv", "posting a receive on the shared receive queue (full?)") {
                ibv_post_srq_recv(pointer, &request, &bad)
            }
        }
    }
}
