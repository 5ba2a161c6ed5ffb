import CRDMA
import SystemPackage

/// A reliable-connected queue pair: a send queue and a receive queue joined to one peer.
///
/// Made either directly (``init(protectionDomain:sendQueue:receiveQueue:capabilities:sharedReceiveQueue:)``,
/// then connected by hand with ``moveToInit(port:access:)``,
/// ``moveToReadyToReceive(remote:port:gidIndex:mtu:)`` and ``moveToReadyToSend(packetSequenceNumber:)``,
/// the way `ibv_rc_pingpong` does), or through rdma_cm with
/// ``ConnectionID/createQueuePair(protectionDomain:sendQueue:receiveQueue:capabilities:sharedReceiveQueue:)``,
/// whose connect/accept move it through the states.
///
/// The queue pair keeps its protection domain, completion queues and shared receive queue alive.
/// Posting is allocation-free. The memory a work request names must stay registered until its
/// completion is polled: hold the ``MemoryRegion`` until then.
///
/// The corresponding C functions are `ibv_create_qp`/`rdma_create_qp` and
/// `ibv_destroy_qp`/`rdma_destroy_qp`.
public final class QueuePair: @unchecked Sendable {
    // @unchecked Sendable: the stored properties are immutable after init; ibv_post_send and
    // ibv_post_recv take the provider's queue locks, and ibv_modify_qp is serialised by the
    // kernel.
    public let protectionDomain: ProtectionDomain
    public let sendQueue: CompletionQueue
    public let receiveQueue: CompletionQueue
    public let sharedReceiveQueue: SharedReceiveQueue?
    /// The rdma_cm id the queue pair belongs to, when made through rdma_cm.
    public let connectionID: ConnectionID?
    /// The underlying `struct ibv_qp *`.
    public let pointer: UnsafeMutablePointer<ibv_qp>
    /// What the device granted (at least what was asked for).
    public let capabilities: QueuePairCapabilities

    /// Creates a reliable-connected queue pair in the RESET state.
    ///
    /// Every send is signalled unless posted with `signaled: false`.
    ///
    /// The corresponding C function is `ibv_create_qp`.
    public init(
        protectionDomain: ProtectionDomain, sendQueue: CompletionQueue, receiveQueue: CompletionQueue,
        capabilities: QueuePairCapabilities = QueuePairCapabilities(),
        sharedReceiveQueue: SharedReceiveQueue? = nil
    ) throws(RDMAError) {
        var attributes = try Self.initAttributes(sendQueue, receiveQueue, capabilities, sharedReceiveQueue)
        let pointer = try nonNull("ibv_create_qp", Self.failureContext(capabilities, protectionDomain)) {
            ibv_create_qp(protectionDomain.pointer, &attributes)
        }
        self.protectionDomain = protectionDomain
        self.sendQueue = sendQueue
        self.receiveQueue = receiveQueue
        self.sharedReceiveQueue = sharedReceiveQueue
        self.connectionID = nil
        self.pointer = pointer
        self.capabilities = QueuePairCapabilities(attributes.cap)
    }

    /// Creates the queue pair of an rdma_cm id (`rdma_create_qp`).
    init(
        connectionID: ConnectionID, protectionDomain: ProtectionDomain, sendQueue: CompletionQueue,
        receiveQueue: CompletionQueue, capabilities: QueuePairCapabilities,
        sharedReceiveQueue: SharedReceiveQueue?
    ) throws(RDMAError) {
        var attributes = try Self.initAttributes(sendQueue, receiveQueue, capabilities, sharedReceiveQueue)
        try minusOneOrErrno("rdma_create_qp", Self.failureContext(capabilities, protectionDomain)) {
            rdma_create_qp(connectionID.pointer, protectionDomain.pointer, &attributes)
        }
        self.protectionDomain = protectionDomain
        self.sendQueue = sendQueue
        self.receiveQueue = receiveQueue
        self.sharedReceiveQueue = sharedReceiveQueue
        self.connectionID = connectionID
        self.pointer = connectionID.pointer.pointee.qp
        self.capabilities = QueuePairCapabilities(attributes.cap)
    }

    deinit {
        if let connectionID {
            rdma_destroy_qp(connectionID.pointer)
        } else {
            let result = ibv_destroy_qp(pointer)
            assert(result == 0, "ibv_destroy_qp failed: \(result)")
        }
    }

    private static func initAttributes(
        _ sendQueue: CompletionQueue, _ receiveQueue: CompletionQueue,
        _ capabilities: QueuePairCapabilities, _ sharedReceiveQueue: SharedReceiveQueue?
    ) throws(RDMAError) -> ibv_qp_init_attr {
        var attributes = ibv_qp_init_attr()
        attributes.send_cq = sendQueue.pointer
        attributes.recv_cq = receiveQueue.pointer
        attributes.srq = sharedReceiveQueue?.pointer
        attributes.cap = try capabilities.raw(operation: "ibv_create_qp")
        attributes.qp_type = IBV_QPT_RC
        attributes.sq_sig_all = 0
        return attributes
    }

    private static func failureContext(_ capabilities: QueuePairCapabilities, _ pd: ProtectionDomain) -> String {
        "creating a reliable-connected queue pair on \(pd.context.deviceName) with \(capabilities) "
            + "(lower the counts if the device's limits are smaller: Context.attributes())"
    }

    /// The queue pair number, which the peer needs to address it.
    public var number: UInt32 { pointer.pointee.qp_num }

    // MARK: - States

    /// The current state.
    ///
    /// The corresponding C function is `ibv_query_qp`.
    public func state() throws(RDMAError) -> ibv_qp_state {
        var attributes = ibv_qp_attr()
        var initAttributes = ibv_qp_init_attr()
        try zeroOrErrno("ibv_query_qp", "querying queue pair \(number)") {
            ibv_query_qp(pointer, &attributes, Int32(IBV_QP_STATE.rawValue), &initAttributes)
        }
        return attributes.qp_state
    }

    /// RESET → INIT: binds the queue pair to a port and sets what the peer may do remotely
    /// (nothing by default).
    ///
    /// The corresponding C function is `ibv_modify_qp`.
    public func moveToInit(port: UInt8 = 1, access: AccessFlags = []) throws(RDMAError) {
        var attributes = ibv_qp_attr()
        attributes.qp_state = IBV_QPS_INIT
        attributes.pkey_index = 0
        attributes.port_num = port
        attributes.qp_access_flags = UInt32(access.rawValue)
        try modify(&attributes, [IBV_QP_STATE, IBV_QP_PKEY_INDEX, IBV_QP_PORT, IBV_QP_ACCESS_FLAGS], "INIT")
    }

    /// INIT → RTR (ready to receive): points the queue pair at the peer.
    ///
    /// - Parameters:
    ///   - remote: the peer's queue pair number, first PSN and GID.
    ///   - gidIndex: the local GID to send from (on RoCE, the one matching the local IP).
    ///   - mtu: the path MTU; at most the port's active MTU.
    ///
    /// The corresponding C function is `ibv_modify_qp`.
    public func moveToReadyToReceive(
        remote: QueuePairEndpoint, port: UInt8 = 1, gidIndex: Int, mtu: ibv_mtu
    ) throws(RDMAError) {
        var attributes = ibv_qp_attr()
        attributes.qp_state = IBV_QPS_RTR
        attributes.path_mtu = mtu
        attributes.dest_qp_num = remote.queuePairNumber
        attributes.rq_psn = remote.packetSequenceNumber
        attributes.max_dest_rd_atomic = 1
        attributes.min_rnr_timer = 12  // 0.64 ms
        attributes.ah_attr.is_global = 1
        attributes.ah_attr.dlid = remote.lid
        attributes.ah_attr.port_num = port
        attributes.ah_attr.grh.dgid = remote.gid.raw
        attributes.ah_attr.grh.sgid_index = UInt8(clamping: gidIndex)
        attributes.ah_attr.grh.hop_limit = 64
        try modify(
            &attributes,
            [IBV_QP_STATE, IBV_QP_AV, IBV_QP_PATH_MTU, IBV_QP_DEST_QPN, IBV_QP_RQ_PSN,
             IBV_QP_MAX_DEST_RD_ATOMIC, IBV_QP_MIN_RNR_TIMER], "RTR")
    }

    /// RTR → RTS (ready to send).
    ///
    /// - Parameters:
    ///   - packetSequenceNumber: this side's first PSN, as told to the peer.
    ///   - timeout: the ACK timeout exponent: 4.096 µs × 2^timeout (14 ≈ 67 ms).
    ///   - retryCount: transport retries before a send fails with "retry exceeded" (0 ... 7).
    ///   - receiverNotReadyRetry: retries when the peer has no receive posted (7 = forever).
    ///
    /// The corresponding C function is `ibv_modify_qp`.
    public func moveToReadyToSend(
        packetSequenceNumber: UInt32, timeout: UInt8 = 14, retryCount: UInt8 = 7,
        receiverNotReadyRetry: UInt8 = 7
    ) throws(RDMAError) {
        var attributes = ibv_qp_attr()
        attributes.qp_state = IBV_QPS_RTS
        attributes.sq_psn = packetSequenceNumber & 0xFF_FFFF
        attributes.timeout = timeout
        attributes.retry_cnt = retryCount
        attributes.rnr_retry = receiverNotReadyRetry
        attributes.max_rd_atomic = 1
        try modify(
            &attributes,
            [IBV_QP_STATE, IBV_QP_SQ_PSN, IBV_QP_TIMEOUT, IBV_QP_RETRY_CNT, IBV_QP_RNR_RETRY,
             IBV_QP_MAX_QP_RD_ATOMIC], "RTS")
    }

    /// Moves the queue pair to ERROR: outstanding work requests complete as flushed.
    ///
    /// The corresponding C function is `ibv_modify_qp`.
    public func moveToError() throws(RDMAError) {
        var attributes = ibv_qp_attr()
        attributes.qp_state = IBV_QPS_ERR
        try modify(&attributes, [IBV_QP_STATE], "ERROR")
    }

    private func modify(_ attributes: inout ibv_qp_attr, _ mask: [ibv_qp_attr_mask], _ state: String) throws(RDMAError) {
        let bits = mask.reduce(0) { $0 | Int32($1.rawValue) }
        try zeroOrErrno("ibv_modify_qp", "moving queue pair \(number) to \(state)") {
            ibv_modify_qp(pointer, &attributes, bits)
        }
    }

    // MARK: - Posting

    /// Posts a send of one piece of registered memory.
    ///
    /// - Parameters:
    ///   - segment: the bytes to send (a zero-length segment sends an empty message).
    ///   - requestID: comes back in the work completion's ``WorkCompletion/requestID``.
    ///   - operation: a plain send, or one with immediate data.
    ///   - signaled: whether a completion is reported; unsignalled sends still take a slot in
    ///     the send queue until a later signalled one completes.
    ///   - inline: copy the bytes into the work request (at most
    ///     ``QueuePairCapabilities/maxInlineData``); the memory is free again on return.
    ///
    /// Inlinable: it is the data path of every message, and the caller's constant arguments
    /// fold away; its failures are built out of line.
    ///
    /// The corresponding C function is `ibv_post_send`.
    @inlinable
    public func postSend(
        _ segment: ScatterGatherElement, requestID: UInt64, operation: SendOperation = .send,
        signaled: Bool = true, inline: Bool = false
    ) throws(RDMAError) {
        var sge = ibv_sge(addr: segment.address, length: segment.length, lkey: segment.localKey)
        var request = Self.sendRequest(requestID: requestID, operation: operation, signaled: signaled)
        request.num_sge = segment.length == 0 ? 0 : 1
        if inline {
            guard Int(segment.length) <= capabilities.maxInlineData else { throw inlineTooLarge(Int(segment.length)) }
            request.send_flags |= IBV_SEND_INLINE.rawValue
        }
        var bad: UnsafeMutablePointer<ibv_send_wr>? = nil
        let result = withUnsafeMutablePointer(to: &sge) { sge in
            request.sg_list = sge
            return ibv_post_send(pointer, &request, &bad)
        }
        if result != 0 { throw sendRefused(result) }
    }

    /// Posts a send gathered from several pieces of registered memory (at most
    /// ``QueuePairCapabilities/maxSendSegments``).
    ///
    /// The corresponding C function is `ibv_post_send`.
    public func postSend(
        segments: some Collection<ScatterGatherElement>, requestID: UInt64,
        operation: SendOperation = .send, signaled: Bool = true, inline: Bool = false
    ) throws(RDMAError) {
        try withSegments(segments, limit: capabilities.maxSendSegments, "ibv_post_send") { sges throws(RDMAError) in
            try postSend(sges, requestID: requestID, operation: operation, signaled: signaled, inline: inline)
        }
    }

    @inline(__always)
    private func postSend(
        _ sges: UnsafeMutableBufferPointer<ibv_sge>, requestID: UInt64, operation: SendOperation,
        signaled: Bool, inline: Bool
    ) throws(RDMAError) {
        var request = Self.sendRequest(requestID: requestID, operation: operation, signaled: signaled)
        request.sg_list = sges.baseAddress
        request.num_sge = Int32(sges.count)
        if inline {
            let total = sges.reduce(0) { $0 + Int($1.length) }
            guard total <= capabilities.maxInlineData else { throw inlineTooLarge(total) }
            request.send_flags |= IBV_SEND_INLINE.rawValue
        }
        var bad: UnsafeMutablePointer<ibv_send_wr>? = nil
        let result = ibv_post_send(pointer, &request, &bad)
        if result != 0 { throw sendRefused(result) }
    }

    /// A send work request without its segments: the request id, the opcode (and immediate
    /// data), and whether it is signalled.
    @inlinable
    static func sendRequest(requestID: UInt64, operation: SendOperation, signaled: Bool) -> ibv_send_wr {
        var request = ibv_send_wr()
        request.wr_id = requestID
        switch operation {
        case .send:
            request.opcode = IBV_WR_SEND
        case .sendWithImmediate(let immediate):
            request.opcode = IBV_WR_SEND_WITH_IMM
            request.imm_data = immediate.bigEndian
        }
        request.send_flags = signaled ? IBV_SEND_SIGNALED.rawValue : 0
        return request
    }

    /// The error for an inline send beyond the granted inline size.
    @usableFromInline
    func inlineTooLarge(_ total: Int) -> RDMAError {
        RDMAError.invalidArgument(
            "ibv_post_send",
            "an inline send of \(total) bytes exceeds the queue pair's inline limit of \(capabilities.maxInlineData) bytes")
    }

    /// The error for a send the provider refused; `result` is what `ibv_post_send` returned (an
    /// errno value, or -1 with `errno` set). Call it right after the post, before `errno` changes.
    @usableFromInline
    func sendRefused(_ result: Int32) -> RDMAError {
        RDMAError.system(
            "ibv_post_send", errno: result > 0 ? Errno(rawValue: result) : currentErrno(),
            "posting a send on queue pair \(number) (send queue full, or not connected?)")
    }

    /// Posts a receive into one piece of registered memory.
    ///
    /// Inlinable, like ``postSend(_:requestID:operation:signaled:inline:)``.
    ///
    /// The corresponding C function is `ibv_post_recv`.
    @inlinable
    public func postReceive(_ segment: ScatterGatherElement, requestID: UInt64) throws(RDMAError) {
        guard sharedReceiveQueue == nil else { throw receiveOnSharedQueue() }
        var sge = ibv_sge(addr: segment.address, length: segment.length, lkey: segment.localKey)
        var request = ibv_recv_wr()
        request.wr_id = requestID
        request.num_sge = 1
        var bad: UnsafeMutablePointer<ibv_recv_wr>? = nil
        let result = withUnsafeMutablePointer(to: &sge) { sge in
            request.sg_list = sge
            return ibv_post_recv(pointer, &request, &bad)
        }
        if result != 0 { throw receiveRefused(result) }
    }

    @usableFromInline
    func receiveOnSharedQueue() -> RDMAError {
        RDMAError.invalidArgument("ibv_post_recv", "this queue pair receives through a shared receive queue: post there")
    }

    /// The error for a receive the provider refused, as ``sendRefused(_:)``.
    @usableFromInline
    func receiveRefused(_ result: Int32) -> RDMAError {
        RDMAError.system(
            "ibv_post_recv", errno: result > 0 ? Errno(rawValue: result) : currentErrno(),
            "posting a receive on queue pair \(number) (receive queue full?)")
    }

    /// Posts a receive scattered over several pieces of registered memory (at most
    /// ``QueuePairCapabilities/maxReceiveSegments``).
    ///
    /// The corresponding C function is `ibv_post_recv`.
    public func postReceive(segments: some Collection<ScatterGatherElement>, requestID: UInt64) throws(RDMAError) {
        try withSegments(segments, limit: capabilities.maxReceiveSegments, "ibv_post_recv") { sges throws(RDMAError) in
            try postReceive(sges, requestID: requestID)
        }
    }

    @inline(__always)
    private func postReceive(_ sges: UnsafeMutableBufferPointer<ibv_sge>, requestID: UInt64) throws(RDMAError) {
        var request = ibv_recv_wr()
        request.wr_id = requestID
        request.sg_list = sges.baseAddress
        request.num_sge = Int32(sges.count)
        var bad: UnsafeMutablePointer<ibv_recv_wr>? = nil
        let result = ibv_post_recv(pointer, &request, &bad)
        if result != 0 { throw receiveRefused(result) }
    }
}

/// Copies segments into a stack buffer of `ibv_sge` for one post.
func withSegments<R>(
    _ segments: some Collection<ScatterGatherElement>, limit: Int, _ operation: String,
    _ body: (UnsafeMutableBufferPointer<ibv_sge>) throws(RDMAError) -> R
) throws(RDMAError) -> R {
    let count = segments.count
    guard count <= limit else {
        throw RDMAError.invalidArgument(operation, "\(count) scatter-gather elements exceed the limit of \(limit)")
    }
    return try withUnsafeTemporaryAllocation(of: ibv_sge.self, capacity: max(count, 1)) {
        buffer throws(RDMAError) -> R in
        for (index, segment) in segments.enumerated() { buffer[index] = segment.raw }
        return try body(UnsafeMutableBufferPointer(rebasing: buffer[0..<count]))
    }
}
