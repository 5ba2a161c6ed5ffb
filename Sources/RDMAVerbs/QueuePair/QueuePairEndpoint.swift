/// What one side of a reliable connection must know about the other to connect its queue
/// pair by hand (without rdma_cm): the numbers `ibv_rc_pingpong` and perftest exchange over a
/// TCP socket.
public struct QueuePairEndpoint: Sendable, Hashable {
    /// The queue pair number.
    public var queuePairNumber: UInt32
    /// The first packet sequence number (24 bits).
    public var packetSequenceNumber: UInt32
    /// The port's GID (on RoCE, the IPv4-mapped GID of the peer's address).
    public var gid: GID
    /// The port's LID (0 on RoCE).
    public var lid: UInt16

    public init(queuePairNumber: UInt32, packetSequenceNumber: UInt32, gid: GID, lid: UInt16 = 0) {
        self.queuePairNumber = queuePairNumber
        self.packetSequenceNumber = packetSequenceNumber & 0xFF_FFFF
        self.gid = gid
        self.lid = lid
    }
}
