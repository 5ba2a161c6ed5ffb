import CDMAIO
import DMAIO
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

/// Turns the Swift layer's events into the header's `struct ec_event`s, and sends each to the
/// channel that should report it: the socket's own, or the one an aiocb named. Registry lock held.
extension Registry {
    /// The next event for `entry`: translated events first, then its Swift channel, then the
    /// channels whose operations report here. Nil when there is none.
    func takeEvent(_ entry: ChannelEntry) throws(Failure) -> ec_event? {
        defer { entry.updateWake() }
        if let event = entry.pending.popFirst() { return event }
        while let event = try swiftCall({ () throws(RDMAError) in try entry.channel.next() }) {
            translate(event, on: entry)
            if let translated = entry.pending.popFirst() { return translated }
        }
        guard !entry.sources.isEmpty else { return nil }
        for handle in entry.sources.keys {
            guard let source = channels[handle] else { continue }
            while let event = try swiftCall({ () throws(RDMAError) in try source.channel.next() }) { translate(event, on: source) }
            source.updateWake()
        }
        return entry.pending.popFirst()
    }

    /// Delivers what `event` (taken from `entry`'s Swift channel) means to the channel that
    /// reports it.
    func translate(_ event: Event, on entry: ChannelEntry) {
        switch event {
        case .connected(let connection):
            guard let socket = entry.socketsByConnection[connection.rawValue] else { return }
            // A non-blocking association: data may flow from this event on.
            if let socketEntry = sockets[socket], socketEntry.connection?.id == connection, socketEntry.area == nil,
               let area = socketEntry.association?.area {
                socketEntry.area = area
                area.sockets += 1
            }
            deliver(ec_event(type: EC_EVENT_CONNECTED, socket: socket), to: entry, from: entry)
        case .sent(let connection, let cookie), .sendFailed(let connection, let cookie, _):
            guard let socket = entry.socketsByConnection[connection.rawValue], let socketEntry = sockets[socket] else { return }
            var translated = ec_event(type: EC_EVENT_SENT, socket: socket)
            if case .sendFailed(_, _, let status) = event {
                translated.type = Int32(EC_EVENT_SEND_FAILED.rawValue)
                translated.status = Int32(status.raw.rawValue)
                translated.error = socketEntry.closing ? ECANCELED : status == .flushed ? ECONNRESET : EIO
            }
            var target = entry
            if cookie == RequestTable.plain {
                socketEntry.plainSendsInFlight = max(0, socketEntry.plainSendsInFlight - 1)
            } else if let request = socketEntry.sendRequests.take(cookie) {
                translated.cookie = request.cookie
                if let named = request.target { target = named }
            }
            deliver(translated, to: target, from: entry)
        case .received(let connection, let length):
            guard let socket = entry.socketsByConnection[connection.rawValue], let socketEntry = sockets[socket] else { return }
            serveReceiveRequests(socketEntry, announcedLength: length)
        case .receiveFailed(let connection, let status):
            guard let socket = entry.socketsByConnection[connection.rawValue] else { return }
            var translated = ec_event(type: EC_EVENT_RECV_FAILED, socket: socket)
            translated.status = Int32(status.raw.rawValue)
            translated.error = EIO
            deliver(translated, to: entry, from: entry)
        case .disconnected(let connection):
            guard let socket = entry.socketsByConnection[connection.rawValue] else { return }
            if let socketEntry = sockets[socket] {
                // Receive requests can no longer be served.
                while let request = socketEntry.receiveRequests.popFirst() {
                    var failed = ec_event(type: EC_EVENT_RECV_FAILED, socket: socket)
                    failed.cookie = request.block.pointee.aio_cookie
                    failed.error = ECONNRESET
                    deliver(failed, to: request.target, from: entry)
                }
            }
            var translated = ec_event(type: EC_EVENT_DISCONNECTED, socket: socket)
            translated.error = ECONNRESET
            deliver(translated, to: entry, from: entry)
        }
    }

    /// A message of `announcedLength` bytes arrived: it fills the oldest aio_recv_cb request, or
    /// is announced for aio_recv.
    func serveReceiveRequests(_ socketEntry: SocketEntry, announcedLength: Int) {
        guard let connection = socketEntry.connection, let area = socketEntry.area else { return }
        while let request = socketEntry.receiveRequests.front {
            guard let length = try? connection.nextMessageLength() else { return }  // taken already
            _ = socketEntry.receiveRequests.popFirst()
            let block = request.block
            var translated = ec_event(type: EC_EVENT_RECEIVED, socket: socketEntry.descriptor)
            translated.cookie = block.pointee.aio_cookie
            if UInt(length) > UInt(bitPattern: block.pointee.aio_nbytes) {
                translated.type = Int32(EC_EVENT_RECV_FAILED.rawValue)
                translated.error = EMSGSIZE
                translated.size = length
                deliver(translated, to: request.target, from: socketEntry.channel)
                continue  // the message stays for the next request, or aio_recv
            }
            guard let message = try? connection.receive() else { return }
            let address = area.hold(message.detach())
            block.pointee.aio_buf = UnsafeMutableRawPointer(mutating: address)
            block.pointee.aio_nbytes = length
            translated.buffer = UnsafeMutableRawPointer(mutating: address)
            translated.size = length
            deliver(translated, to: request.target, from: socketEntry.channel)
            return
        }
        var translated = ec_event(type: EC_EVENT_RECEIVED, socket: socketEntry.descriptor)
        translated.size = announcedLength
        deliver(translated, to: socketEntry.channel, from: socketEntry.channel)
    }

    /// Queues `event` on `target`; an event for another channel than the one it was taken from
    /// ends that operation's claim on the source (see ``ChannelEntry/addSource(_:)``).
    func deliver(_ event: ec_event, to target: ChannelEntry, from source: ChannelEntry) {
        target.pending.append(event)
        if target !== source {
            target.removeSource(source)
            target.updateWake()
        }
    }
}

extension ec_event {
    init(type: ec_event_type, socket: Int32) {
        self.init(type: Int32(type.rawValue), socket: socket, cookie: 0, buffer: nil, size: 0, status: 0, error: 0)
    }
}
