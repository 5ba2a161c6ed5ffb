import CRDMA
import SystemPackage

/// A completion queue: where the device reports finished work requests.
///
/// Polling (``poll(into:)``) reads the queue from user-mapped memory without a system call or a
/// heap allocation. To sleep instead, attach the queue to a ``CompletionChannel``, arm it with
/// ``requestNotification(solicitedOnly:)``, wait for the channel's event, then poll again.
///
/// The queue keeps its context and channel alive; queue pairs using it keep it alive.
///
/// The corresponding C functions are `ibv_create_cq` and `ibv_destroy_cq`.
public final class CompletionQueue: @unchecked Sendable {
    // @unchecked Sendable: the pointer is immutable after init and libibverbs serialises
    // polling and arming of one queue with the provider's own lock (rxe, mlx5: cq->lock).
    /// The identity of a completion queue, as reported by ``CompletionChannel/nextEvent()``.
    public struct ID: Hashable, Sendable {
        let address: UInt
        init(_ pointer: UnsafeMutablePointer<ibv_cq>) { address = UInt(bitPattern: pointer) }
    }

    public let context: Context
    public let channel: CompletionChannel?
    /// The underlying `struct ibv_cq *`.
    public let pointer: UnsafeMutablePointer<ibv_cq>

    /// Creates a completion queue with room for at least `capacity` completions.
    ///
    /// - Parameters:
    ///   - capacity: entries; must be at least the number of work requests that can be
    ///     outstanding on every queue pair using it, or completions are lost (CQ overrun).
    ///   - channel: where notifications go, or nil for a queue that is only polled.
    ///
    /// The corresponding C function is `ibv_create_cq`.
    public init(context: Context, capacity: Int, channel: CompletionChannel? = nil) throws(RDMAError) {
        guard capacity > 0, capacity <= Int(Int32.max) else {
            throw RDMAError.invalidArgument("ibv_create_cq", "a completion queue needs a capacity of at least 1, not \(capacity)")
        }
        self.context = context
        self.channel = channel
        pointer = try nonNull("ibv_create_cq", "creating a completion queue of \(capacity) entries on \(context.deviceName)") {
            ibv_create_cq(context.pointer, Int32(capacity), nil, channel?.pointer, 0)
        }
    }

    deinit {
        let result = ibv_destroy_cq(pointer)
        assert(result == 0, "ibv_destroy_cq failed: \(result)")
    }

    /// This queue's identity, to compare with what ``CompletionChannel/nextEvent()`` returns.
    public var id: ID { ID(pointer) }

    /// The number of entries the device actually allocated (at least the capacity asked for).
    public var capacity: Int { Int(pointer.pointee.cqe) }

    /// Moves up to `completions.count` finished work requests into `completions`, front first,
    /// and returns how many it moved (0 when none are ready).
    ///
    /// Allocates nothing: pass a buffer you keep and reuse. Always inlined: a busy loop calls
    /// it over and over, and it is a call to the provider and a check.
    ///
    /// The corresponding C function is `ibv_poll_cq`.
    @inlinable @inline(__always)
    public func poll(into completions: UnsafeMutableBufferPointer<WorkCompletion>) throws(RDMAError) -> Int {
        let count = completions.withMemoryRebound(to: ibv_wc.self) { wcs in
            ibv_poll_cq(pointer, Int32(clamping: wcs.count), wcs.baseAddress)
        }
        guard count >= 0 else { throw pollFailed() }
        return Int(count)
    }

    @usableFromInline
    func pollFailed() -> RDMAError {
        RDMAError.system("ibv_poll_cq", errno: .ioError, "polling the completion queue (the device reported an error)")
    }

    /// Moves up to `completions.count` finished work requests into the array; see
    /// ``poll(into:)-(UnsafeMutableBufferPointer<WorkCompletion>)``.
    ///
    /// Allocates nothing when the array is not shared with another variable.
    @inline(__always)
    public func poll(into completions: inout [WorkCompletion]) throws(RDMAError) -> Int {
        try completions.withUnsafeMutableBufferPointer { buffer throws(RDMAError) in try poll(into: buffer) }
    }

    /// Arms the queue: the next completion (or next solicited one) produces an event on the
    /// channel. Poll once more after arming, or a completion that arrived just before may wait
    /// unseen.
    ///
    /// The corresponding C function is `ibv_req_notify_cq`.
    public func requestNotification(solicitedOnly: Bool = false) throws(RDMAError) {
        guard channel != nil else {
            throw RDMAError.invalidArgument("ibv_req_notify_cq", "this completion queue has no completion channel to notify")
        }
        try zeroOrErrno("ibv_req_notify_cq", "arming the completion queue") {
            ibv_req_notify_cq(pointer, solicitedOnly ? 1 : 0)
        }
    }
}
