import CRDMA

/// One-sided work on the peer's memory: binding and invalidating memory windows, so that the
/// peer may read one buffer of ours, and reading a buffer the peer granted us.
extension QueuePair {
    /// Binds `window` to `length` bytes of `region` at `address` for the peer of this queue pair,
    /// with `access` (``AccessFlags/remoteRead``, for example), and returns the window's new
    /// remote key: valid only on this queue pair, for that range and access, once the bind has
    /// executed (work requests of one send queue execute in order, so a send posted after the
    /// bind may carry the key). `region` must have been registered with
    /// ``AccessFlags/memoryWindowBind``.
    ///
    /// The corresponding C function is `ibv_post_send` (`IBV_WR_BIND_MW`).
    public func postBind(
        _ window: MemoryWindow, to region: MemoryRegion, address: UInt64, length: Int, access: AccessFlags,
        requestID: UInt64, signaled: Bool = false
    ) throws(RDMAError) -> UInt32 {
        let key = window.nextKey()
        var request = ibv_send_wr()
        request.wr_id = requestID
        request.opcode = IBV_WR_BIND_MW
        request.send_flags = signaled ? IBV_SEND_SIGNALED.rawValue : 0
        request.bind_mw.mw = window.pointer
        request.bind_mw.rkey = key
        request.bind_mw.bind_info.mr = region.pointer
        request.bind_mw.bind_info.addr = address
        request.bind_mw.bind_info.length = UInt64(length)
        request.bind_mw.bind_info.mw_access_flags = UInt32(access.rawValue)
        var bad: UnsafeMutablePointer<ibv_send_wr>? = nil
        try zeroOrErrno("ibv_post_send", "binding a memory window of \(length) bytes on queue pair \(number)") {
            ibv_post_send(pointer, &request, &bad)
        }
        // The provider names the window by its current key in the next bind (rxe checks it
        // against the kernel's, which this bind sets): `ibv_mw.rkey` follows the binds.
        window.pointer.pointee.rkey = key
        return key
    }

    /// Takes back the remote key `remoteKey` (a window's, from ``postBind(_:to:address:length:access:requestID:signaled:)``):
    /// once this executes, the peer's reads with it fail with a remote access error.
    ///
    /// The corresponding C function is `ibv_post_send` (`IBV_WR_LOCAL_INV`).
    public func postLocalInvalidate(remoteKey: UInt32, requestID: UInt64, signaled: Bool = true) throws(RDMAError) {
        var request = ibv_send_wr()
        request.wr_id = requestID
        request.opcode = IBV_WR_LOCAL_INV
        request.send_flags = signaled ? IBV_SEND_SIGNALED.rawValue : 0
        request.invalidate_rkey = remoteKey
        var bad: UnsafeMutablePointer<ibv_send_wr>? = nil
        try zeroOrErrno("ibv_post_send", "invalidating a remote key on queue pair \(number)") {
            ibv_post_send(pointer, &request, &bad)
        }
    }

    /// Reads `segment.length` bytes of the peer's memory at `remoteAddress`, under its key
    /// `remoteKey`, into `segment` (local memory registered for ``AccessFlags/localWrite``).
    /// The queue pair must allow outstanding reads (``moveToReadyToSend(packetSequenceNumber:timeout:retryCount:receiverNotReadyRetry:)``
    /// allows one; rdma_cm's initiator depth) and the peer's must allow ``AccessFlags/remoteRead``.
    ///
    /// The corresponding C function is `ibv_post_send` (`IBV_WR_RDMA_READ`).
    public func postRead(
        into segment: ScatterGatherElement, remoteAddress: UInt64, remoteKey: UInt32, requestID: UInt64, signaled: Bool = true
    ) throws(RDMAError) {
        var sge = ibv_sge(addr: segment.address, length: segment.length, lkey: segment.localKey)
        var request = ibv_send_wr()
        request.wr_id = requestID
        request.opcode = IBV_WR_RDMA_READ
        request.send_flags = signaled ? IBV_SEND_SIGNALED.rawValue : 0
        request.num_sge = 1
        request.wr.rdma.remote_addr = remoteAddress
        request.wr.rdma.rkey = remoteKey
        var bad: UnsafeMutablePointer<ibv_send_wr>? = nil
        let result = withUnsafeMutablePointer(to: &sge) { sge in
            request.sg_list = sge
            return ibv_post_send(pointer, &request, &bad)
        }
        if result != 0 { throw sendRefused(result) }
    }
}
