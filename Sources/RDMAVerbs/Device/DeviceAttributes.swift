import CRDMA

/// The limits of a device that matter when sizing queues and buffers.
///
/// The corresponding C structure is `struct ibv_device_attr`.
public struct DeviceAttributes: Sendable, Hashable {
    public let firmwareVersion: String
    public let maxMemoryRegionSize: UInt64
    public let maxQueuePairs: Int
    public let maxQueuePairWorkRequests: Int
    public let maxScatterGatherElements: Int
    public let maxCompletionQueues: Int
    public let maxCompletionQueueEntries: Int
    public let maxMemoryRegions: Int
    public let maxSharedReceiveQueues: Int
    public let maxSharedReceiveQueueWorkRequests: Int
    public let physicalPortCount: Int

    init(_ raw: ibv_device_attr) {
        firmwareVersion = withUnsafeBytes(of: raw.fw_ver) {
            String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
        }
        maxMemoryRegionSize = raw.max_mr_size
        maxQueuePairs = Int(raw.max_qp)
        maxQueuePairWorkRequests = Int(raw.max_qp_wr)
        maxScatterGatherElements = Int(raw.max_sge)
        maxCompletionQueues = Int(raw.max_cq)
        maxCompletionQueueEntries = Int(raw.max_cqe)
        maxMemoryRegions = Int(raw.max_mr)
        maxSharedReceiveQueues = Int(raw.max_srq)
        maxSharedReceiveQueueWorkRequests = Int(raw.max_srq_wr)
        physicalPortCount = Int(raw.phys_port_cnt)
    }
}
