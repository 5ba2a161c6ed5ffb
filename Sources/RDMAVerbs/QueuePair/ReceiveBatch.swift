import CRDMA
import SystemPackage

/// Receive work requests gathered to go to the device together: one `ibv_post_recv` call with
/// a chain of requests, the way `ibv_rc_pingpong` re-posts its receives in bulk rather than one
/// per message. Post it with ``QueuePair/post(_:)``.
///
/// The batch owns storage for `capacity` requests and their segments, allocated once: gathering
/// and posting allocate nothing. Not thread-safe; its owner serialises access.
public struct ReceiveBatch: ~Copyable {
    @usableFromInline let requests: UnsafeMutablePointer<ibv_recv_wr>
    @usableFromInline let segments: UnsafeMutablePointer<ibv_sge>
    /// How many requests the batch holds at most.
    public let capacity: Int
    /// How many requests are gathered and not posted yet.
    public var count: Int { gathered }
    @usableFromInline var gathered = 0

    /// An empty batch with room for `capacity` requests (at least one).
    public init(capacity: Int) {
        precondition(capacity > 0, "a receive batch needs room for at least one request")
        self.capacity = capacity
        requests = .allocate(capacity: capacity)
        requests.initialize(repeating: ibv_recv_wr(), count: capacity)
        segments = .allocate(capacity: capacity)
        segments.initialize(repeating: ibv_sge(), count: capacity)
        for index in 0..<capacity {
            requests[index].sg_list = segments + index
            requests[index].num_sge = 1
            requests[index].next = index + 1 < capacity ? requests + index + 1 : nil
        }
    }

    deinit {
        requests.deinitialize(count: capacity)
        requests.deallocate()
        segments.deinitialize(count: capacity)
        segments.deallocate()
    }

    public var isEmpty: Bool { count == 0 }
    public var isFull: Bool { count == capacity }

    /// Adds a receive into one piece of registered memory. The batch must not be full.
    @inlinable
    public mutating func append(_ segment: ScatterGatherElement, requestID: UInt64) {
        precondition(gathered < capacity, "the receive batch is full: post it first")
        segments[gathered] = ibv_sge(addr: segment.address, length: segment.length, lkey: segment.localKey)
        requests[gathered].wr_id = requestID
        gathered += 1
    }

    /// Drops the gathered requests without posting them.
    public mutating func removeAll() { gathered = 0 }
}

extension QueuePair {
    /// Posts every request of `batch` with one call, as one chain, and empties the batch.
    ///
    /// - Throws: ``RDMAError/Code/systemCall`` when the device refused a request (receive queue
    ///   full, or the queue pair in error); the requests ahead of it in the chain were posted,
    ///   it and those after it were not. The batch is empty either way.
    ///
    /// The corresponding C function is `ibv_post_recv`.
    public func post(_ batch: inout ReceiveBatch) throws(RDMAError) {
        guard sharedReceiveQueue == nil else { throw receiveOnSharedQueue() }
        let count = batch.count
        guard count > 0 else { return }
        batch.gathered = 0
        let last = batch.requests + (count - 1)
        let following = last.pointee.next
        last.pointee.next = nil
        defer { last.pointee.next = following }
        var bad: UnsafeMutablePointer<ibv_recv_wr>? = nil
        let result = ibv_post_recv(pointer, batch.requests, &bad)
        if result != 0 {
            let posted = bad.map { $0 - batch.requests } ?? 0
            throw RDMAError.system(
                "ibv_post_recv", errno: result > 0 ? Errno(rawValue: result) : currentErrno(),
                "posting \(count) receives in one chain on queue pair \(number): the device took \(posted) (receive queue full?)")
        }
    }
}
