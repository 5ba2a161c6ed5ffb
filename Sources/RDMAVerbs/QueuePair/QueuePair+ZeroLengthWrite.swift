import CRDMA

extension QueuePair {
    /// Posts a signalled RDMA write of zero bytes: it touches no memory and consumes no receive
    /// at the peer (a zero-length RDMA operation needs no remote key), yet the peer's device must
    /// acknowledge it. The peer's queue pair must allow remote writes (``AccessFlags/remoteWrite``
    /// at the queue-pair level); its memory regions need not. A keepalive: on a silent peer it
    /// fails with ``WorkCompletion/Status/retryExceeded`` once the retries run out.
    ///
    /// The corresponding C function is `ibv_post_send` (`IBV_WR_RDMA_WRITE`, no segment).
    public func postZeroLengthWrite(requestID: UInt64) throws(RDMAError) {
        var request = ibv_send_wr()
        request.wr_id = requestID
        request.sg_list = nil
        request.num_sge = 0
        request.opcode = IBV_WR_RDMA_WRITE
        request.send_flags = IBV_SEND_SIGNALED.rawValue
        request.wr.rdma.remote_addr = 0
        request.wr.rdma.rkey = 0
        var bad: UnsafeMutablePointer<ibv_send_wr>? = nil
        try zeroOrErrno("ibv_post_send", "posting a zero-length RDMA write on queue pair \(number)") {
            ibv_post_send(pointer, &request, &bad)
        }
    }
}
