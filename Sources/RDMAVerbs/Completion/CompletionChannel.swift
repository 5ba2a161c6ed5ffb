import CRDMA
import SystemPackage

/// A completion channel: a file descriptor that becomes readable when a completion queue
/// attached to it has a completion and was armed with
/// ``CompletionQueue/requestNotification(solicitedOnly:)``.
///
/// The descriptor is non-blocking, so it can sit in poll/epoll next to other descriptors;
/// ``nextEvent()`` never blocks and ``waitForEvent(timeout:)`` blocks with a time limit.
///
/// Completion queues attached to the channel hold it alive, so it is destroyed after them.
///
/// The corresponding C functions are `ibv_create_comp_channel` and `ibv_destroy_comp_channel`.
public final class CompletionChannel: @unchecked Sendable {
    // @unchecked Sendable: the pointer is immutable after init; reading its events is a
    // read(2) on its descriptor, which the kernel serialises.
    public let context: Context
    /// The underlying `struct ibv_comp_channel *`.
    public let pointer: UnsafeMutablePointer<ibv_comp_channel>

    /// Creates a channel and makes its descriptor non-blocking.
    ///
    /// The corresponding C function is `ibv_create_comp_channel`.
    public init(context: Context) throws(RDMAError) {
        self.context = context
        pointer = try nonNull("ibv_create_comp_channel", "creating a completion channel on \(context.deviceName)") {
            ibv_create_comp_channel(context.pointer)
        }
        do {
            try setNonBlocking(pointer.pointee.fd, for: "completion channel")
        } catch {
            ibv_destroy_comp_channel(pointer)
            throw error
        }
    }

    deinit {
        let result = ibv_destroy_comp_channel(pointer)
        assert(result == 0, "ibv_destroy_comp_channel failed: \(result)")
    }

    /// The descriptor to watch with poll/epoll (readable when an event is pending).
    public var fileDescriptor: Int32 { pointer.pointee.fd }

    /// Takes the next completion event, if one is pending, and acknowledges it.
    ///
    /// Returns which completion queue fired, or nil when no event is pending. The queue is
    /// disarmed by the event: call ``CompletionQueue/requestNotification(solicitedOnly:)`` again,
    /// then poll it, to see further completions.
    ///
    /// The corresponding C functions are `ibv_get_cq_event` and `ibv_ack_cq_events`.
    public func nextEvent() throws(RDMAError) -> CompletionQueue.ID? {
        var cq: UnsafeMutablePointer<ibv_cq>? = nil
        var cqContext: UnsafeMutableRawPointer? = nil
        while ibv_get_cq_event(pointer, &cq, &cqContext) != 0 {
            let errno = currentErrno()
            if errno == .interrupted { continue }
            if errno == .resourceTemporarilyUnavailable { return nil }
            throw RDMAError.system("ibv_get_cq_event", errno: errno, "reading the completion channel")
        }
        // Acknowledge at once: a queue cannot be destroyed while it has unacknowledged events,
        // and after this the pointer serves only as the queue's identity.
        ibv_ack_cq_events(cq, 1)
        return CompletionQueue.ID(cq!)
    }

    /// Waits up to `timeout` (forever when nil) for a completion event and takes it.
    ///
    /// Returns nil when the time runs out.
    ///
    /// The corresponding C functions are `poll`, `ibv_get_cq_event` and `ibv_ack_cq_events`.
    public func waitForEvent(timeout: Duration?) throws(RDMAError) -> CompletionQueue.ID? {
        try nextOrWait(on: fileDescriptor, timeout: timeout) { () throws(RDMAError) in try nextEvent() }
    }
}
