import CRDMA

/// A finished work request, as the device reported it.
///
/// Laid out exactly as `struct ibv_wc`, so arrays of it are polled into without copying.
///
/// The corresponding C structure is `struct ibv_wc`.
@frozen
public struct WorkCompletion: Sendable {
    /// The C structure.
    public var raw: ibv_wc

    public init() { raw = ibv_wc() }

    /// The caller's identifier from the work request (`wr_id`).
    @inlinable public var requestID: UInt64 { raw.wr_id }
    /// Whether the request succeeded.
    @inlinable public var isSuccess: Bool { raw.status == IBV_WC_SUCCESS }
    /// The completion status.
    public var status: Status { Status(raw.status) }
    /// What kind of request finished.
    @inlinable public var opcode: ibv_wc_opcode { raw.opcode }
    /// Whether this is a receive (the request was on the receive queue).
    @inlinable public var isReceive: Bool { raw.opcode.rawValue & IBV_WC_RECV.rawValue != 0 }
    /// Bytes received (receives only).
    @inlinable public var byteCount: Int { Int(raw.byte_len) }
    /// The queue pair number the request belonged to.
    @inlinable public var queuePairNumber: UInt32 { raw.qp_num }
    /// The 32-bit immediate data sent with the message, in host order, if it carried any.
    @inlinable public var immediateData: UInt32? {
        raw.wc_flags & IBV_WC_WITH_IMM.rawValue != 0 ? UInt32(bigEndian: raw.imm_data) : nil
    }
    /// The vendor's error code, for reports of failed completions.
    @inlinable public var vendorError: UInt32 { raw.vendor_err }

    /// A work completion status (`enum ibv_wc_status`), with the library's text for it.
    public struct Status: Sendable, Hashable, CustomStringConvertible {
        public let raw: ibv_wc_status
        init(_ raw: ibv_wc_status) { self.raw = raw }

        public static let success = Status(IBV_WC_SUCCESS)
        public static let flushed = Status(IBV_WC_WR_FLUSH_ERR)
        public static let retryExceeded = Status(IBV_WC_RETRY_EXC_ERR)
        public static let receiverNotReadyRetryExceeded = Status(IBV_WC_RNR_RETRY_EXC_ERR)
        public static let localProtectionError = Status(IBV_WC_LOC_PROT_ERR)
        public static let localLengthError = Status(IBV_WC_LOC_LEN_ERR)
        /// soft-RoCE's status for a send whose port or network device went down.
        public static let localQueuePairOperationError = Status(IBV_WC_LOC_QP_OP_ERR)
        public static let remoteAccessError = Status(IBV_WC_REM_ACCESS_ERR)
        public static let remoteInvalidRequest = Status(IBV_WC_REM_INV_REQ_ERR)

        /// The corresponding C function is `ibv_wc_status_str`.
        public var description: String { String(cString: ibv_wc_status_str(raw)) }
    }
}

extension RDMAError {
    /// An error for a work request that completed with a failure status.
    public static func workCompletion(_ completion: WorkCompletion, _ what: String) -> RDMAError {
        RDMAError(
            .workCompletion, operation: "ibv_poll_cq",
            message: "\(what) failed with status \"\(completion.status)\" (\(completion.status.raw.rawValue), "
                + "vendor error \(completion.vendorError))")
    }
}
