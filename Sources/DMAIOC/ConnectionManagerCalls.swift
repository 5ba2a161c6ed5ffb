import CDMAIO
import CRDMA
import DMAIO
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

// sio_connect, sio_listen, sio_accept, sio_close — see dmaio.h.

/// A descriptor standing for an rdma_cm connection or listener: a real descriptor (an eventfd),
/// so that its number cannot collide with the program's own descriptors.
private func standInDescriptor(_ operation: String) throws(Failure) -> Int32 {
    let descriptor = eventfd(0, Int32(EFD_CLOEXEC))
    guard descriptor >= 0 else { throw Failure(Glibc.errno, "\(operation): eventfd failed (out of descriptors?)") }
    return descriptor
}

/// Registers a new rdma_cm connection under a stand-in descriptor; closes the connection when
/// that fails.
private func register(_ connection: Connection, on channel: ChannelReference, _ operation: String) throws(Failure) -> Int32 {
    let descriptor: Int32
    do throws(Failure) {
        descriptor = try standInDescriptor(operation)
    } catch {
        connection.close()
        throw error
    }
    return try register(descriptor, kind: .connectionManager, connection: connection, on: channel, operation)
}

private func duration(milliseconds: Int32) -> Duration? {
    milliseconds < 0 ? nil : .milliseconds(milliseconds)
}

/// Registers a new rdma_cm connection (or listener) under `descriptor` on `channel`; closes
/// the descriptor when that fails.
private func register(_ descriptor: Int32, kind: SocketState.Kind, connection: Connection?, on channel: ChannelReference,
                      _ operation: String) throws(Failure) -> Int32 {
    do throws(Failure) {
        try channel.withOpen(operation) { state throws(Failure) in
            try state.register(SocketState(descriptor: descriptor, kind: kind, channel: channel, connection: connection), operation)
        }
    } catch {
        connection?.close()
        _ = dmaio_real_close(descriptor)
        throw error
    }
    return descriptor
}

/// `int sio_connect(ec_t ec, const char *host, uint16_t port, const char *source, int timeout_ms)`.
/// The corresponding calls are `rdma_create_id`, `rdma_resolve_addr` and `rdma_resolve_route`.
@_cdecl("sio_connect")
public func sioConnect(_ ec: OpaquePointer?, _ host: UnsafePointer<CChar>?, _ port: UInt16, _ source: UnsafePointer<CChar>?, _ timeoutMilliseconds: Int32) -> Int32 {
    cCall { () throws(Failure) -> Int32 in
        let channel = try Registry.shared.channel(ec, "sio_connect")
        guard let host else { throw .null("sio_connect", "host") }
        guard timeoutMilliseconds >= -1 else {
            throw Failure(EINVAL, "sio_connect: timeout \(timeoutMilliseconds) ms: give -1 (the default, 30 s) or a positive time")
        }
        let events = try channel.withOpen("sio_connect") { $0.channel }
        let name = String(cString: host)
        let address = name.contains(":") ? "[\(name)]:\(port)" : "\(name):\(port)"
        let connection = try swiftCall { () throws(RDMAError) in
            try Connection(to: address, from: source.map { String(cString: $0) }, events: events,
                           timeout: timeoutMilliseconds <= 0 ? .seconds(30) : .milliseconds(timeoutMilliseconds))
        }
        return try register(connection, on: channel, "sio_connect")
    }
}

/// `int sio_listen(ec_t ec, const char *address, uint16_t port, int backlog)`. The
/// corresponding calls are `rdma_bind_addr` and `rdma_listen`. The descriptor returned is a
/// duplicate of the listener's rdma_cm event channel descriptor, so that it is readable while a
/// connection request is pending.
@_cdecl("sio_listen")
public func sioListen(_ ec: OpaquePointer?, _ address: UnsafePointer<CChar>?, _ port: UInt16, _ backlog: Int32) -> Int32 {
    cCall { () throws(Failure) -> Int32 in
        let channel = try Registry.shared.channel(ec, "sio_listen")
        let events = try channel.withOpen("sio_listen") { $0.channel }
        let name = address.map { String(cString: $0) } ?? "0.0.0.0"
        let listener = try swiftCall { () throws(RDMAError) in
            try Listener(on: name.contains(":") ? "[\(name)]:\(port)" : "\(name):\(port)", events: events, backlog: max(backlog, 1))
        }
        let descriptor = fcntl(listener.fileDescriptor, F_DUPFD_CLOEXEC, 0)
        guard descriptor >= 0 else { throw Failure(Glibc.errno, "sio_listen: duplicating the listener's descriptor failed (out of descriptors?)") }
        return try register(descriptor, kind: .listener(listener), connection: nil, on: channel, "sio_listen")
    }
}

/// `int sio_accept(int listener, int timeout_ms)`. The corresponding call is
/// `rdma_get_cm_event` (a connect request). A timeout of 0 takes a pending request or fails
/// with `EAGAIN`, for an event loop that polls the listening descriptor.
@_cdecl("sio_accept")
public func sioAccept(_ listenerDescriptor: Int32, _ timeoutMilliseconds: Int32) -> Int32 {
    cCall { () throws(Failure) -> Int32 in
        let registry = Registry.shared
        let (listener, channel) = try registry.withSocket(listenerDescriptor, "sio_accept") { _, socket throws(Failure) -> (Listener, ChannelReference) in
            guard case .listener(let listener) = socket.kind else {
                throw Failure(EBADF, "sio_accept: descriptor \(listenerDescriptor) is not listening (sio_listen makes one)")
            }
            return (listener, socket.channel)
        }
        let connection: Connection
        if timeoutMilliseconds == 0 {
            guard let pending = try swiftCall({ () throws(RDMAError) in try listener.acceptPending() }) else {
                throw Failure(EAGAIN, literal: "sio_accept: no connection request is pending: wait until the listening descriptor is readable")
            }
            connection = pending
        } else {
            guard timeoutMilliseconds >= -1 else {
                throw Failure(EINVAL, "sio_accept: timeout \(timeoutMilliseconds) ms: give -1 (forever), 0 (only a pending request) or a positive time")
            }
            connection = try swiftCall { () throws(RDMAError) in try listener.accept(timeout: duration(milliseconds: timeoutMilliseconds)) }
        }
        return try register(connection, on: channel, "sio_accept")
    }
}

/// `int sio_close(int socket)`. The corresponding calls are `rdma_disconnect` (or
/// `ibv_modify_qp` to ERROR and `shutdown` for a TCP socket), `ibv_destroy_qp` and `close`.
///
/// Every operation the socket accepted ends in its event before this returns: the connection is
/// closed (queued sends fail at once, posted ones are flushed by the device), the channel is
/// driven until the posted ones completed, and what is still outstanding then — aio_recv_cb
/// requests, a send the device did not give back within ``flushDeadline`` — fails with
/// `ECANCELED`. No event names the socket after that.
@_cdecl("sio_close")
public func sioClose(_ socket: Int32) -> Int32 {
    cCall { () throws(Failure) -> Int32 in
        try Registry.shared.closeSocket(socket, closingDescriptor: true)
        return 0
    }
}

/// close(), dup2() or dup3() on a descriptor the library holds as a socket (close_guard.c):
/// what sio_close does, then the descriptor is closed (or left to dup2/dup3, which replace it).
@_cdecl("dmaio_close_guarded")
public func dmaioCloseGuarded(_ socket: Int32, _ closeDescriptor: Bool) -> Int32 {
    cCall { () throws(Failure) -> Int32 in
        do throws(Failure) {
            try Registry.shared.closeSocket(socket, closingDescriptor: closeDescriptor)
            return 0
        } catch where error.errno == EBADF {
            // Not a socket any more (sio_close in another thread came first): a plain close.
            return closeDescriptor ? dmaio_real_close(socket) : 0
        }
    }
}

extension Registry {
    /// sio_close (the socket's channel locked): ends the socket's association, queues the last
    /// event of every operation it accepted, and closes the descriptor when `closingDescriptor`.
    func closeSocket(_ socket: Int32, closingDescriptor: Bool) throws(Failure) {
        let channel = try withSocket(socket, "sio_close") { channel, entry throws(Failure) -> ChannelReference in
            try close(entry, of: channel, closingDescriptor: closingDescriptor)
            return entry.channel
        }
        channel.updateWake()
    }

    private func close(_ entry: SocketState, of channel: ChannelState, closingDescriptor: Bool) throws(Failure) {
        let socket = entry.descriptor
        let reference = entry.channel
        guard !entry.associating || entry.association != nil else {
            throw Failure(EBUSY, "sio_close: socket \(socket) is being associated by another thread: wait for dma_assoc to return")
        }
        if let association = entry.association, entry.area == nil {
            // A non-blocking association still in its handshake: it ends now, with its event;
            // its task closes the connection and the descriptor once it has stopped using them.
            // dup2/dup3 would hand the number to another file while the task may still use it.
            guard closingDescriptor else {
                throw Failure(EBUSY, "dup2: socket \(socket) is in the middle of its association (DMA_NONBLOCK): sio_close it, or wait for its event")
            }
            entry.closing = true
            association.task.cancel()
            association.end.closeLeftToTask.store(true, ordering: .sequentiallyConsistent)
            // Nothing of the connection is reported after this event.
            if let connection = entry.connection { channel.socketsByConnection[connection.id.rawValue] = nil }
            // The area is the program's again before the event says so (dma_free may follow):
            // the task holds the Swift area itself for as long as it needs it.
            _ = try? association.area.withOpen("sio_close") { area in area.sockets -= 1 }
            var failed = ec_event(type: EC_EVENT_ASSOC_FAILED, socket: socket)
            failed.error = ECANCELED
            reference.deliver(failed, from: reference)
            channel.unregister(socket)
            return
        }
        entry.closing = true
        if let connection = entry.connection {
            connection.close()
            let deadline = ContinuousClock.now + flushDeadline
            while connection.hasSendsInFlight, ContinuousClock.now < deadline {
                guard let event = try? channel.channel.wait(timeout: .milliseconds(10)) else { continue }
                translate(event, on: channel, reference)
            }
            while let event = try? channel.channel.next() { translate(event, on: channel, reference) }
            channel.socketsByConnection[connection.id.rawValue] = nil
        }
        // What is still outstanding fails now, each with its event.
        for _ in 0..<entry.plainSendsInFlight {
            var failed = ec_event(type: EC_EVENT_SEND_FAILED, socket: socket)
            failed.error = ECANCELED
            reference.deliver(failed, from: reference)
        }
        entry.plainSendsInFlight = 0
        for request in entry.sendRequests.takeAll() {
            guard let target = request.target else { continue }
            var failed = ec_event(type: EC_EVENT_SEND_FAILED, socket: socket)
            failed.cookie = request.cookie
            failed.error = ECANCELED
            target.deliver(failed, from: reference)
        }
        while let request = entry.receiveRequests.popFirst() {
            var failed = ec_event(type: EC_EVENT_RECV_FAILED, socket: socket)
            failed.cookie = request.block.pointee.aio_cookie
            failed.error = ECANCELED
            request.target.deliver(failed, from: reference)
        }
        channel.unregister(socket)
        if let area = entry.area { _ = try? area.withOpen("sio_close") { area in area.sockets -= 1 } }
        if closingDescriptor { _ = dmaio_real_close(socket) }
    }
}

/// How long `sio_close` waits for the device to give back the sends it had posted: a flushed
/// queue pair returns them at once, so this bounds only a device that misbehaves.
private let flushDeadline = Duration.seconds(2)
