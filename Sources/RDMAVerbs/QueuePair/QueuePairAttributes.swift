import CRDMA

/// What a queue pair is set to, as the device reports it: its state, what a remote peer may
/// do to it, and how long it waits for a silent peer.
///
/// The corresponding C type is `struct ibv_qp_attr`, filled by `ibv_query_qp`.
public struct QueuePairAttributes: Sendable, Hashable {
    /// The current state (`qp_state`).
    public var state: ibv_qp_state
    /// What a remote peer may do: RDMA read, write, atomics (`qp_access_flags`).
    public var access: AccessFlags
    /// The local ACK timeout as the exponent of 4.096 µs × 2^`ackTimeout` (`timeout`; 0: wait forever).
    public var ackTimeout: UInt8
    /// How many times an unacknowledged packet is sent again before the queue pair fails (`retry_cnt`).
    public var retryCount: UInt8
    /// How many times a "receiver not ready" answer is retried; 7 means forever (`rnr_retry`).
    public var receiverNotReadyRetry: UInt8

    /// How long the queue pair waits for a silent peer before it fails its sends: the ACK
    /// timeout, once for the first try and once for each retry. Nil for an infinite timeout.
    public var silentPeerLimit: Duration? {
        guard ackTimeout != 0 else { return nil }
        let once = Duration.nanoseconds(4096) * (1 << Int(ackTimeout))
        return once * (Int(retryCount) + 1)
    }
}

extension QueuePair {
    /// The queue pair's attributes, read back from the device.
    ///
    /// The corresponding C function is `ibv_query_qp`.
    public func attributes() throws(RDMAError) -> QueuePairAttributes {
        var attributes = ibv_qp_attr()
        var initAttributes = ibv_qp_init_attr()
        let mask = [IBV_QP_STATE, IBV_QP_ACCESS_FLAGS, IBV_QP_TIMEOUT, IBV_QP_RETRY_CNT, IBV_QP_RNR_RETRY]
            .reduce(Int32(0)) { $0 | Int32($1.rawValue) }
        try zeroOrErrno("ibv_query_qp", "querying queue pair \(number)") {
            ibv_query_qp(pointer, &attributes, mask, &initAttributes)
        }
        return QueuePairAttributes(
            state: attributes.qp_state, access: AccessFlags(rawValue: Int32(bitPattern: attributes.qp_access_flags)),
            ackTimeout: attributes.timeout, retryCount: attributes.retry_cnt, receiverNotReadyRetry: attributes.rnr_retry)
    }
}

extension QueuePair {
    /// Sets what a remote peer may do to this queue pair — RDMA read, write, atomics — in any
    /// state from INIT on. rdma_cm grants remote write (and read and atomics when responder
    /// resources are offered) when it connects a queue pair; this takes them back.
    ///
    /// The corresponding C function is `ibv_modify_qp` (`IBV_QP_ACCESS_FLAGS`).
    public func setRemoteAccess(_ access: AccessFlags) throws(RDMAError) {
        var attributes = ibv_qp_attr()
        attributes.qp_access_flags = UInt32(bitPattern: access.rawValue)
        try zeroOrErrno("ibv_modify_qp", "setting the remote access of queue pair \(number)") {
            ibv_modify_qp(pointer, &attributes, Int32(IBV_QP_ACCESS_FLAGS.rawValue))
        }
    }
}
