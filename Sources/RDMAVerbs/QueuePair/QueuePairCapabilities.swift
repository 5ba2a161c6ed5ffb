import CRDMA

/// How many work requests and scatter-gather elements a queue pair's queues hold, and how much
/// data a send may carry inline.
///
/// The corresponding C structure is `struct ibv_qp_cap`.
public struct QueuePairCapabilities: Sendable, Hashable {
    /// Outstanding send work requests.
    public var maxSendRequests: Int
    /// Outstanding receive work requests (ignored with a shared receive queue).
    public var maxReceiveRequests: Int
    /// Scatter-gather elements per send.
    public var maxSendSegments: Int
    /// Scatter-gather elements per receive.
    public var maxReceiveSegments: Int
    /// Bytes a send may carry inside the work request itself (copied by the CPU at post time,
    /// so the buffer is free again at once). The device may grant more than asked; 0 disables.
    public var maxInlineData: Int

    public init(
        maxSendRequests: Int = 128, maxReceiveRequests: Int = 128, maxSendSegments: Int = 1,
        maxReceiveSegments: Int = 1, maxInlineData: Int = 0
    ) {
        self.maxSendRequests = maxSendRequests
        self.maxReceiveRequests = maxReceiveRequests
        self.maxSendSegments = maxSendSegments
        self.maxReceiveSegments = maxReceiveSegments
        self.maxInlineData = maxInlineData
    }

    init(_ raw: ibv_qp_cap) {
        self.init(
            maxSendRequests: Int(raw.max_send_wr), maxReceiveRequests: Int(raw.max_recv_wr),
            maxSendSegments: Int(raw.max_send_sge), maxReceiveSegments: Int(raw.max_recv_sge),
            maxInlineData: Int(raw.max_inline_data))
    }

    func raw(operation: String) throws(RDMAError) -> ibv_qp_cap {
        func field(_ value: Int, _ name: String, minimum: Int = 0) throws(RDMAError) -> UInt32 {
            guard value >= minimum, value <= Int(UInt32.max) else {
                throw RDMAError.invalidArgument(operation, "\(name) must be between \(minimum) and \(UInt32.max), not \(value)")
            }
            return UInt32(value)
        }
        return ibv_qp_cap(
            max_send_wr: try field(maxSendRequests, "maxSendRequests", minimum: 1),
            max_recv_wr: try field(maxReceiveRequests, "maxReceiveRequests"),
            max_send_sge: try field(maxSendSegments, "maxSendSegments", minimum: 1),
            max_recv_sge: try field(maxReceiveSegments, "maxReceiveSegments"),
            max_inline_data: try field(maxInlineData, "maxInlineData"))
    }
}
