import CRDMA

extension Context {
    /// The device context that librdmacm uses for `deviceName` (or its first device), for
    /// objects that must live on the same context as rdma_cm's queue pairs: a protection domain
    /// given to ``ConnectionID/createQueuePair(protectionDomain:sendQueue:receiveQueue:capabilities:sharedReceiveQueue:)``
    /// must come from the id's context, which is this one.
    ///
    /// librdmacm keeps these contexts open for the life of the process; this object never
    /// closes them.
    ///
    /// The corresponding C functions are `rdma_get_devices` and `rdma_free_devices`.
    public static func connectionManagerContext(deviceName: String? = nil) throws(RDMAError) -> Context {
        var count: Int32 = 0
        guard let list = rdma_get_devices(&count), count > 0 else {
            throw RDMAError.noDevice("rdma_get_devices")
        }
        defer { rdma_free_devices(list) }
        let contexts = (0..<Int(count)).compactMap { list[$0] }
        let names = contexts.map { String(cString: ibv_get_device_name($0.pointee.device)) }
        guard let deviceName else { return Context(borrowing: contexts[0]) }
        guard let index = names.firstIndex(of: deviceName) else {
            throw RDMAError(
                .deviceNotFound, operation: "rdma_get_devices",
                message: "no RDMA device named \(deviceName); devices here: " + names.joined(separator: ", "))
        }
        return Context(borrowing: contexts[index])
    }
}
