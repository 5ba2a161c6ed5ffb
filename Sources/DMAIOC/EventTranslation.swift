import CDMAIO
import DMAIO
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

/// Turns the Swift layer's events into the header's `struct ec_event`s, and sends each to the
/// channel that should report it: the socket's own, or the one an aiocb named.
extension Registry {
    /// The next event for `reference`: translated events first, then its Swift channel, then
    /// the channels whose operations report here. Nil when there is none. Takes each channel's
    /// lock in turn, never two at once.
    func takeEvent(_ reference: ChannelReference, _ operation: String) throws(Failure) -> ec_event? {
        if let event = reference.popEvent() { return event }
        try reference.withOpen(operation) { channel throws(Failure) in
            while let event = try swiftCall({ () throws(RDMAError) in try channel.channel.next() }) {
                if translate(event, on: channel, reference) { break }
            }
        }
        if let event = reference.popEvent() { return event }
        var index = 0
        while let source = reference.source(at: index) {
            index += 1
            try? source.withOpen(operation) { channel throws(Failure) in try drain(channel, source) }
            source.updateWake()
        }
        return reference.popEvent()
    }

    /// Translates every event `channel` has ready (its lock held); the caller shows them on its
    /// descriptor (``ChannelReference/updateWake()``).
    func drain(_ channel: ChannelState, _ reference: ChannelReference) throws(Failure) {
        while let event = try swiftCall({ () throws(RDMAError) in try channel.channel.next() }) { translate(event, on: channel, reference) }
    }

    /// Delivers what `event` (taken from `channel`'s Swift channel, its lock held) means to the
    /// channel that reports it. Returns whether something was queued on `channel` itself.
    @discardableResult
    func translate(_ event: Event, on channel: ChannelState, _ reference: ChannelReference) -> Bool {
        switch event {
        case .connected(let connection):
            guard let socket = channel.socketsByConnection[connection.rawValue], let state = channel.sockets[socket] else { return false }
            // A non-blocking association: data may flow from this event on.
            if state.connection?.id == connection, state.area == nil, let association = state.association {
                state.area = association.area
            }
            return reference.deliver(ec_event(type: EC_EVENT_CONNECTED, socket: socket), from: reference)
        case .sent(let connection, let cookie), .sendFailed(let connection, let cookie, _):
            guard let socket = channel.socketsByConnection[connection.rawValue], let state = channel.sockets[socket] else { return false }
            var translated = ec_event(type: EC_EVENT_SENT, socket: socket)
            if case .sendFailed(_, _, let status) = event {
                translated.type = Int32(EC_EVENT_SEND_FAILED.rawValue)
                translated.status = Int32(status.raw.rawValue)
                translated.error = state.closing ? ECANCELED : status == .flushed ? ECONNRESET : EIO
            }
            var target = reference
            if cookie == RequestTable.plain {
                state.plainSendsInFlight = max(0, state.plainSendsInFlight - 1)
            } else if let request = state.sendRequests.take(cookie) {
                translated.cookie = request.cookie
                if let named = request.target { target = named }
            }
            return target.deliver(translated, from: reference)
        case .received(let connection, let length):
            guard let socket = channel.socketsByConnection[connection.rawValue], let state = channel.sockets[socket] else { return false }
            return serveReceiveRequests(state, reference, announcedLength: length)
        case .receiveFailed(let connection, let status):
            guard let socket = channel.socketsByConnection[connection.rawValue] else { return false }
            var translated = ec_event(type: EC_EVENT_RECV_FAILED, socket: socket)
            translated.status = Int32(status.raw.rawValue)
            translated.error = EIO
            return reference.deliver(translated, from: reference)
        case .disconnected(let connection):
            guard let socket = channel.socketsByConnection[connection.rawValue] else { return false }
            if let state = channel.sockets[socket] {
                // Receive requests can no longer be served.
                while let request = state.receiveRequests.popFirst() {
                    var failed = ec_event(type: EC_EVENT_RECV_FAILED, socket: socket)
                    failed.cookie = request.block.pointee.aio_cookie
                    failed.error = ECONNRESET
                    request.target.deliver(failed, from: reference)
                }
            }
            var translated = ec_event(type: EC_EVENT_DISCONNECTED, socket: socket)
            translated.error = ECONNRESET
            return reference.deliver(translated, from: reference)
        case .interrupted(let connection), .resumed(let connection):
            guard let socket = channel.socketsByConnection[connection.rawValue] else { return false }
            let type = if case .interrupted = event { EC_EVENT_INTERRUPTED } else { EC_EVENT_RESUMED }
            return reference.deliver(ec_event(type: type, socket: socket), from: reference)
        }
    }

    /// A message of `announcedLength` bytes arrived on `socket` (its channel's lock held): it
    /// fills the oldest aio_recv_cb request, or is announced for aio_recv. Returns whether an
    /// event was queued on the socket's own channel.
    func serveReceiveRequests(_ socket: SocketState, _ reference: ChannelReference, announcedLength: Int) -> Bool {
        guard let connection = socket.connection, let area = socket.area else { return false }
        var own = false
        while let request = socket.receiveRequests.front {
            guard let length = try? connection.nextMessageLength() else { return own }  // taken already
            _ = socket.receiveRequests.popFirst()
            let block = request.block
            var translated = ec_event(type: EC_EVENT_RECEIVED, socket: socket.descriptor)
            translated.cookie = block.pointee.aio_cookie
            if UInt(length) > UInt(bitPattern: block.pointee.aio_nbytes) {
                translated.type = Int32(EC_EVENT_RECV_FAILED.rawValue)
                translated.error = EMSGSIZE
                translated.size = length
                own = request.target.deliver(translated, from: reference) || own
                continue  // the message stays for the next request, or aio_recv
            }
            guard let message = try? connection.receive() else { return own }
            let detached = message.detach()
            // The area outlives the socket's association (dma_free is EBUSY until then).
            guard let address = try? area.withOpen("aio_recv_cb", { area in UInt(bitPattern: area.hold(detached)) }) else { return own }
            block.pointee.aio_buf = UnsafeMutableRawPointer(bitPattern: address)
            block.pointee.aio_nbytes = length
            translated.buffer = UnsafeMutableRawPointer(bitPattern: address)
            translated.size = length
            return request.target.deliver(translated, from: reference) || own
        }
        var translated = ec_event(type: EC_EVENT_RECEIVED, socket: socket.descriptor)
        translated.size = announcedLength
        return reference.deliver(translated, from: reference)
    }
}
