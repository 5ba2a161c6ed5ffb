import RDMAVerbs

/// How long a connection waits for a peer that went silent — its host stalled or died, its link
/// was cut — before its queue pair fails, and how long it then has to resume.
///
/// A queue pair sends a packet again when no acknowledgement came within the ACK timeout, and
/// gives up after `retryCount` more tries: 7 × 268 ms ≈ 1.9 s of silence. That failure is not the
/// connection's end where it can resume (``ConnectionCore/Resumption``): a new queue pair takes
/// over and nothing is lost, and the connection is given up only after ``resumeDeadline``. So the
/// queue pair's own timeout is kept short, which serves resume best: a lost packet costs 268 ms,
/// not seconds (soft-RoCE loses packets under load), and a stall is noticed soon and handed to
/// the resume, which waits as long as the deadline says. A longer ACK timeout (2^20 × 4.096 µs
/// ≈ 4.3 s, eight tries ≈ 34 s) would ride out a stall without resuming, at 4.3 s per lost
/// packet (docs/resume.md). A peer whose process dies is seen at once instead: its kernel
/// closes the connection.
///
/// A connection with nothing in flight would never notice: one that is idle, or waiting for
/// credits that a vanished peer will never hand back. So every ``keepAliveInterval`` the
/// library's watcher thread (``ChannelWatcher``) probes each connection that saw no completion
/// since its last look: a zero-length RDMA write, which touches no memory and takes no receive
/// slot, but which the peer's device must acknowledge (see `QueuePair.postZeroLengthWrite`). A
/// silent peer thus shows as a disconnect within about 2 × 2 s + 1.9 s of silence, whether or
/// not the program calls in: the failed probe's completion wakes whoever sleeps on the channel
/// (a task waiting on it, or a sleeper on ``EventChannel/fileDescriptor``) or is taken at the
/// program's next call.
///
/// The corresponding verbs attributes are `timeout` and `retry_cnt` of `struct ibv_qp_attr`,
/// set through `rdma_set_option(RDMA_OPTION_ID_ACK_TIMEOUT)` and `rdma_conn_param.retry_count`
/// on rdma_cm connections, and through `ibv_modify_qp` (RTS) on connections made over a socket.
package enum PeerTimeout {
    /// 4.096 µs × 2^16 ≈ 268 ms between tries.
    package static let ackTimeout: UInt8 = 16
    /// 6 retries after the first try. Not 7, the most verbs allow: soft-RoCE reads a retry
    /// count of 7 as "retry forever", like the receiver-not-ready count, and would never give up.
    package static let retryCount: UInt8 = 6
    /// How often the event channel looks for connections that went quiet, and probes them.
    package static let keepAliveInterval: Duration = .seconds(2)
    /// How long a connection whose queue pair failed may take to resume on a new one before
    /// it is given up (``ConnectionCore/Resumption``): a peer unreachable that long — its host
    /// stalled, its link down — is reported gone. A peer whose process closed the connection or
    /// died is not waited for: its kernel says so at once.
    package static let resumeDeadline: Duration = .seconds(30)
}

extension AccessFlags {
    /// What a connection's queue pair lets the peer do: zero-length RDMA writes (the
    /// keepalive) and reads through a window this side bound for one large message
    /// (docs/large-messages.md). Its areas' memory regions allow no remote access themselves,
    /// so a remote write with data, or a read under any other key, fails at the key check and
    /// touches nothing.
    static let peerAccess: AccessFlags = [.remoteWrite, .remoteRead]
}
