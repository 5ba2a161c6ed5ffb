/// How long a connection waits for a peer that went silent — its host died, its link was cut —
/// before it fails the sends in flight and reports the connection broken.
///
/// A queue pair sends a packet again when no acknowledgement came within the ACK timeout, and
/// gives up after `retryCount` more tries: 8 × 268 ms ≈ 2.1 s of silence. A shorter timeout
/// detects a dead peer sooner but resends on every pause of a busy or emulated host (soft-RoCE
/// under QEMU pauses for tens of milliseconds); a longer one leaves the application waiting.
/// A peer whose process dies is seen at once instead: its kernel closes the connection.
///
/// The corresponding verbs attributes are `timeout` and `retry_cnt` of `struct ibv_qp_attr`,
/// set through `rdma_set_option(RDMA_OPTION_ID_ACK_TIMEOUT)` and `rdma_conn_param.retry_count`
/// on rdma_cm connections, and through `ibv_modify_qp` (RTS) on connections made over a socket.
enum PeerTimeout {
    /// 4.096 µs × 2^16 ≈ 268 ms between tries.
    static let ackTimeout: UInt8 = 16
    /// 7 retries after the first try (the most verbs allow).
    static let retryCount: UInt8 = 7
}
