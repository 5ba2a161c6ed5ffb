import CRDMA

/// What is negotiated when a connection is made or accepted.
///
/// The corresponding C structure is `struct rdma_conn_param`.
public struct ConnectionParameters: Sendable, Hashable {
    /// Bytes handed to the peer with the request or answer (at most 56 with connect, 196 with
    /// accept and reject, on the TCP port space).
    public var privateData: [UInt8]
    /// Outstanding RDMA reads/atomics this side accepts as a target.
    public var responderResources: UInt8
    /// Outstanding RDMA reads/atomics this side issues.
    public var initiatorDepth: UInt8
    /// Transport retries before a send fails (0 ... 7).
    public var retryCount: UInt8
    /// Retries when the peer has no receive posted (7 = forever). The layers above never need
    /// them for correctness: their credits keep a receive posted for every send.
    public var receiverNotReadyRetryCount: UInt8
    /// The queue pair number announced by an id that has no queue pair of its own (rdma_cm then
    /// leaves establishing the connection to the caller); ignored when it has one.
    public var queuePairNumber: UInt32

    public init(
        privateData: [UInt8] = [], responderResources: UInt8 = 1, initiatorDepth: UInt8 = 1,
        retryCount: UInt8 = 7, receiverNotReadyRetryCount: UInt8 = 7, queuePairNumber: UInt32 = 0
    ) {
        self.privateData = privateData
        self.responderResources = responderResources
        self.initiatorDepth = initiatorDepth
        self.retryCount = retryCount
        self.receiverNotReadyRetryCount = receiverNotReadyRetryCount
        self.queuePairNumber = queuePairNumber
    }

    static let maxConnectPrivateData = 56
    static let maxAcceptPrivateData = 196

    @discardableResult
    func withRaw<R>(
        limit: Int, _ operation: String, _ body: (inout rdma_conn_param) throws(RDMAError) -> R
    ) throws(RDMAError) -> R {
        guard privateData.count <= limit else {
            throw RDMAError.invalidArgument(operation, "\(privateData.count) bytes of private data exceed the limit of \(limit)")
        }
        var raw = rdma_conn_param()
        raw.responder_resources = responderResources
        raw.initiator_depth = initiatorDepth
        raw.retry_count = min(retryCount, 7)
        raw.rnr_retry_count = min(receiverNotReadyRetryCount, 7)
        raw.flow_control = 1
        raw.qp_num = queuePairNumber
        raw.private_data_len = UInt8(privateData.count)
        let result = privateData.withUnsafeBytes { bytes in
            Result { () throws(RDMAError) -> R in
                raw.private_data = bytes.count > 0 ? bytes.baseAddress : nil
                return try body(&raw)
            }
        }
        return try result.get()
    }
}
