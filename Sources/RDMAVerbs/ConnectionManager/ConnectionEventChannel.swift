import CRDMA
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// An rdma_cm event channel: where address resolution, connection requests, establishment and
/// disconnection are reported, behind a non-blocking file descriptor.
///
/// Ids made on the channel keep it alive, so it is destroyed after them.
///
/// The corresponding C functions are `rdma_create_event_channel` and
/// `rdma_destroy_event_channel`.
public final class ConnectionEventChannel: @unchecked Sendable {
    // @unchecked Sendable: the pointer is immutable after init; librdmacm's calls on a channel
    // are read(2)s and write(2)s on its descriptor.
    /// The underlying `struct rdma_event_channel *`.
    public let pointer: UnsafeMutablePointer<rdma_event_channel>

    /// Creates a channel with a non-blocking descriptor.
    ///
    /// The corresponding C function is `rdma_create_event_channel`.
    /// Fails with ``RDMAError/Code/noDevice`` when the machine has no RDMA device (librdmacm
    /// reports `ENODEV` then).
    public init() throws(RDMAError) {
        do {
            pointer = try nonNull("rdma_create_event_channel", "opening the rdma_cm event channel (is the rdma_ucm module loaded? see rxe-setup doctor)") {
                rdma_create_event_channel()
            }
        } catch where error.errno == Errno(rawValue: ENODEV) {
            throw RDMAError.noDevice("rdma_create_event_channel")
        }
        do {
            try setNonBlocking(pointer.pointee.fd, for: "rdma_cm event channel")
        } catch {
            rdma_destroy_event_channel(pointer)
            throw error
        }
    }

    deinit {
        rdma_destroy_event_channel(pointer)
    }

    /// The descriptor to watch with poll/epoll (readable when an event is pending).
    public var fileDescriptor: Int32 { pointer.pointee.fd }

    /// Takes the next event if one is pending; nil otherwise. Never blocks.
    ///
    /// The corresponding C functions are `rdma_get_cm_event` and `rdma_ack_cm_event`.
    public func nextEvent() throws(RDMAError) -> ConnectionEvent? {
        var event: UnsafeMutablePointer<rdma_cm_event>? = nil
        while rdma_get_cm_event(pointer, &event) != 0 {
            let errno = currentErrno()
            if errno == .interrupted { continue }
            if errno == .resourceTemporarilyUnavailable { return nil }
            throw RDMAError.system("rdma_get_cm_event", errno: errno, "reading the rdma_cm event channel")
        }
        let copy = ConnectionEvent(event!, channel: self)
        rdma_ack_cm_event(event)
        return copy
    }

    /// Waits up to `timeout` (forever when nil) for the next event; nil when the time runs out.
    ///
    /// The corresponding C functions are `poll`, `rdma_get_cm_event` and `rdma_ack_cm_event`.
    public func waitForEvent(timeout: Duration?) throws(RDMAError) -> ConnectionEvent? {
        try nextOrWait(on: fileDescriptor, timeout: timeout) { () throws(RDMAError) in try nextEvent() }
    }

    /// Waits for the next event and requires it to be `expected`.
    ///
    /// Failure events become errors that say what went wrong: ``RDMAError/Code/addressNotAvailable``
    /// for address and route errors, ``RDMAError/Code/connectionFailed`` for unreachable peers,
    /// rejections and connect errors, ``RDMAError/Code/disconnected``, and
    /// ``RDMAError/Code/timedOut`` when nothing happens in time.
    ///
    /// Meant for a channel that serves one id at a time (e.g. a client's own channel).
    public func expectEvent(
        _ expected: ConnectionEvent.Kind, timeout: Duration?, while what: @autoclosure () -> String
    ) throws(RDMAError) -> ConnectionEvent {
        guard let event = try waitForEvent(timeout: timeout) else {
            throw RDMAError(
                .timedOut, operation: "rdma_get_cm_event", errno: .timedOut,
                message: "no \(expected) within \(timeout!) while \(what()): is the peer up and reachable over RDMA?")
        }
        if event.kind == expected { return event }
        throw RDMAError(connectionEvent: event, expected: expected, while: what())
    }
}

extension RDMAError {
    /// An error for an rdma_cm event that reports a failure (or was not the one expected).
    package init(connectionEvent event: ConnectionEvent, expected: ConnectionEvent.Kind, while what: String) {
        let errno = event.status < 0 ? Errno(rawValue: -event.status) : nil
        switch event.kind {
        case .addressError, .routeError:
            self.init(
                .addressNotAvailable, operation: "rdma_resolve_\(event.kind == .addressError ? "addr" : "route")",
                errno: errno,
                message: "\(event.kind) while \(what): no RDMA device has a route to that address "
                    + "(rxe-setup status lists the devices and their addresses)")
        case .unreachable, .connectError:
            self.init(
                .connectionFailed, operation: "rdma_connect", errno: errno,
                message: "\(event.kind) while \(what): the peer did not answer over RDMA (is it running, "
                    + "and is its port's link up?)")
        case .rejected:
            self.init(
                .connectionFailed, operation: "rdma_connect", errno: .connectionRefused,
                message: "the peer rejected the connection (reason \(event.status)) while \(what): "
                    + "is a server listening on that address and port?")
        case .disconnected, .deviceRemoval, .timewaitExit:
            self.init(.disconnected, operation: "rdma_get_cm_event", errno: .connectionReset,
                      message: "\(event.kind) while \(what)")
        default:
            self.init(.systemCall, operation: "rdma_get_cm_event", errno: errno,
                      message: "expected \(expected) but got \(event) while \(what)")
        }
    }
}
