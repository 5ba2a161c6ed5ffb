import CDMAIO
import DMAIO
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

// dma_assoc, aio_send, aio_recv, aio_send_cb, aio_recv_cb — see dmaio.h.

/// `int dma_assoc(int socket, dma_mem_t handle, size_t size, int flags)`. The corresponding
/// verbs calls are `ibv_create_qp` and `ibv_modify_qp` (TCP socket) or `rdma_create_qp` and
/// `rdma_connect`/`rdma_accept` (rdma_cm descriptor), and `ibv_post_recv`.
///
/// With `DMA_NONBLOCK` it returns once the association is started: the handshake runs on the
/// library's watcher thread (the Swift layer's async association) and ends in one event on the
/// socket's channel, `EC_EVENT_CONNECTED` or `EC_EVENT_ASSOC_FAILED` with the errno.
@_cdecl("dma_assoc")
public func dmaAssoc(_ socket: Int32, _ handle: OpaquePointer?, _ size: UInt, _ flags: Int32) -> Int32 {
    cCall { () throws(Failure) -> Int32 in
        let registry = Registry.shared
        let nonblocking = flags & Int32(DMA_NONBLOCK) != 0
        let areaReference = try registry.area(handle, "dma_assoc")
        let dmaArea = try areaReference.withOpen("dma_assoc") { $0.area }
        let slotSize = try receiveSlotSize(flags, "dma_assoc")
        let largeBytes = try largeMessageBytes(flags)
        let sendCredits = sendCredits(flags)
        guard size >= UInt(slotSize) else {
            throw Failure(EINVAL, "dma_assoc: \(size) receive bytes hold no slot of \(slotSize) bytes: give at least one slot, or smaller slots (DMA_SLOT_LOG2)")
        }
        guard size <= UInt(dmaArea.size) else {
            throw Failure(ENOBUFS, "dma_assoc: \(size) receive bytes do not fit in the area of \(dmaArea.size) bytes: give fewer, or allocate a larger area")
        }
        let receiveBytes = Int(size)
        guard registry.socketChannel(socket) != nil else {
            try checkSocketDescriptor(socket, "dma_assoc")
            throw Failure(EINVAL, "dma_assoc: socket \(socket) has no event channel: call ec_bind(ec, socket) first")
        }
        let (connection, channel) = try registry.withSocket(socket, "dma_assoc") { channel, entry throws(Failure) -> (Connection, ChannelReference) in
            if case .listener = entry.kind { throw Failure(EINVAL, "dma_assoc: descriptor \(socket) is listening: associate the descriptors sio_accept returns") }
            guard entry.area == nil else { throw Failure(EISCONN, "dma_assoc: socket \(socket) is already associated") }
            guard !entry.associating else { throw Failure(EALREADY, "dma_assoc: socket \(socket) is being associated already") }
            // Counted from now on: dma_free is EBUSY while the association is made.
            try areaReference.withOpen("dma_assoc") { area in area.sockets += 1 }
            let connection: Connection
            if let existing = entry.connection {
                connection = existing
            } else {
                do throws(Failure) {
                    connection = try swiftCall { () throws(RDMAError) in try Connection(socket: socket, events: channel.channel) }
                } catch {
                    _ = try? areaReference.withOpen("dma_assoc") { area in area.sockets -= 1 }
                    throw error
                }
                entry.connection = connection
                channel.socketsByConnection[connection.id.rawValue] = socket
                if let deadline = entry.resumeDeadline { connection.resumeDeadline = deadline }
            }
            entry.associating = true
            if nonblocking {
                // The handshake runs on the watcher thread; its end takes this channel's lock,
                // so it is recorded only after this returns.
                let end = HandshakeEnd()
                let reference = entry.channel
                let task = Task {
                    var failure: Failure?
                    do {
                        try await connection.associate(dmaArea, receiveBytes: receiveBytes, slotSize: slotSize, largeMessageBytes: largeBytes,
                                                               sendCredits: sendCredits)
                    } catch let error as RDMAError {
                        failure = Failure(error)
                    } catch {
                        failure = Failure(ECANCELED, "dma_assoc: cancelled by sio_close")
                    }
                    Registry.shared.associationEnded(socket, on: reference, connection: connection, area: areaReference, end: end, failure: failure)
                }
                entry.association = (task, areaReference, end)
            }
            return (connection, entry.channel)
        }
        if nonblocking { return 0 }
        // The handshake blocks (up to 10 s): without the lock.
        var failure: Failure?
        do throws(RDMAError) {
            try connection.associate(dmaArea, receiveBytes: receiveBytes, slotSize: slotSize, largeMessageBytes: largeBytes, sendCredits: sendCredits)
        } catch {
            failure = Failure(error)
        }
        // sio_close is EBUSY while `associating`: the socket is still there.
        try channel.withOpen("dma_assoc") { state throws(Failure) in
            guard let entry = state.sockets[socket] else { return }
            entry.associating = false
            if failure != nil {
                Registry.forgetFailedAssociation(entry, connection: connection, in: state)
            } else {
                entry.area = areaReference
            }
        }
        if let failure {
            _ = try? areaReference.withOpen("dma_assoc") { area in area.sockets -= 1 }
            throw failure
        }
        return 0
    }
}

/// `int sio_set_resume_deadline(int socket, int timeout_ms)`: how long the socket's connection
/// may stay interrupted before it is given up (``Connection/resumeDeadline``); before dma_assoc
/// on a TCP socket, kept for its connection.
@_cdecl("sio_set_resume_deadline")
public func sioSetResumeDeadline(_ socket: Int32, _ timeoutMilliseconds: Int32) -> Int32 {
    cCall { () throws(Failure) -> Int32 in
        guard Registry.shared.socketChannel(socket) != nil else {
            throw Failure(EBADF, "sio_set_resume_deadline: descriptor \(socket) is not a DMAIO socket: call ec_bind(ec, socket) first, or use sio_connect / sio_accept")
        }
        guard timeoutMilliseconds >= 0 else {
            throw Failure(EINVAL, "sio_set_resume_deadline: a deadline of \(timeoutMilliseconds) ms: give 0 or more milliseconds")
        }
        let deadline = Duration.milliseconds(timeoutMilliseconds)
        try Registry.shared.withSocket(socket, "sio_set_resume_deadline") { _, entry throws(Failure) in
            if case .listener = entry.kind {
                throw Failure(EINVAL, "sio_set_resume_deadline: descriptor \(socket) is listening: set the deadline on the descriptors sio_accept returns")
            }
            entry.resumeDeadline = deadline
            entry.connection?.resumeDeadline = deadline
        }
        return 0
    }
}

/// `size_t dma_assoc_footprint(size_t size, int flags, size_t peer_credits)`: the bytes of the
/// area an association takes, as dma_assoc computes them (Association's slot block).
@_cdecl("dma_assoc_footprint")
public func dmaAssocFootprint(_ size: UInt, _ flags: Int32, _ peerCredits: UInt) -> UInt {
    let slot: UInt
    do {
        slot = UInt(try receiveSlotSize(flags, "dma_assoc_footprint"))
    } catch {
        LastError.set(error.message)
        Glibc.errno = error.errno
        return 0
    }
    // A side takes at most as many of the peer's credits as it grants, or DMA_SEND_CREDITS (Association).
    let taken = min(peerCredits, sendCredits(flags).map(UInt.init) ?? size / slot)
    let (slots, overflow) = (size / slot).addingReportingOverflow(taken)
    guard size >= slot, !overflow, slots <= UInt(Int.max) / slot else {
        LastError.set(size < slot ? "dma_assoc_footprint: \(size) receive bytes hold no slot of \(slot) bytes"
                                  : "dma_assoc_footprint: \(size) receive bytes and \(peerCredits) credits are more than any area")
        Glibc.errno = EINVAL
        return 0
    }
    // The slots lie in one block of the buddy allocator: a power of two, at least its smallest block.
    let bytes = max(slots * slot, UInt(DMAArea.minimumBlock))
    return bytes.nonzeroBitCount == 1 ? bytes : 1 << (UInt.bitWidth - bytes.leadingZeroBitCount)
}

/// `int sio_getsockname(int socket, struct sockaddr *address, socklen_t *length)`: the local
/// address of a DMAIO socket — for a listener, with the port it got when it asked for port 0.
@_cdecl("sio_getsockname")
public func sioGetsockname(_ socket: Int32, _ address: UnsafeMutablePointer<sockaddr>?, _ length: UnsafeMutablePointer<socklen_t>?) -> Int32 {
    cCall { () throws(Failure) -> Int32 in
        guard let address else { throw .null("sio_getsockname", "address") }
        guard let length else { throw .null("sio_getsockname", "length") }
        let local = try Registry.shared.withSocket(socket, "sio_getsockname") { _, entry throws(Failure) -> SocketAddress? in
            switch entry.kind {
            case .listener(let listener): return listener.address
            case .connectionManager:
                guard let address = entry.connection?.localAddress else {
                    throw Failure(ENOTCONN, "sio_getsockname: socket \(socket) has no local address (its connection was closed)")
                }
                return address
            case .tcp: return nil
            }
        }
        guard let local else {
            // An upgraded TCP socket: the kernel knows.
            guard getsockname(socket, address, length) == 0 else { throw Failure(Glibc.errno, "sio_getsockname: getsockname failed") }
            return 0
        }
        var storage = local.storage
        let count = min(Int(length.pointee), Int(local.length))
        withUnsafeBytes(of: &storage) { UnsafeMutableRawPointer(address).copyMemory(from: $0.baseAddress!, byteCount: count) }
        length.pointee = local.length
        return 0
    }
}

/// The receive slot size dma_assoc's `flags` ask for (DMA_SLOT_LOG2, or 64 KiB by default);
/// EINVAL for a slot size out of range or flags dma_assoc does not know.
private func receiveSlotSize(_ flags: Int32, _ operation: String) throws(Failure) -> Int {
    guard flags & Int32(DMA_SLOT_INVALID) == 0 else {
        throw Failure(EINVAL, "\(operation): DMA_SLOT_LOG2 of a number above 63 (slots are 2^6 to 2^30 bytes), DMA_LARGE_LOG2 out of 6 ... 40, or DMA_SEND_CREDITS out of 1 ... 32767")
    }
    guard flags & ~(0x3f | Int32(DMA_NONBLOCK) | 0x3f00 | Int32(DMA_LARGE_NONE) | 0x7fff_0000) == 0 else { throw .flags(operation, flags) }
    let log2 = Int(flags & 0x3f)
    guard log2 == 0 || (6...30).contains(log2) else {
        throw Failure(EINVAL, "\(operation): DMA_SLOT_LOG2(\(log2)): slots are 2^6 (64 B) to 2^30 (1 GiB) bytes")
    }
    return log2 == 0 ? 64 << 10 : 1 << log2
}

/// The most of the peer's credits this side takes, from dma_assoc's `flags` (DMA_SEND_CREDITS):
/// nil for the default (as many as it grants).
private func sendCredits(_ flags: Int32) -> Int? {
    let credits = Int(flags >> 16 & 0x7fff)
    return credits == 0 ? nil : credits
}

/// How much of the area large messages may hold, from dma_assoc's `flags` (DMA_LARGE_LOG2,
/// DMA_LARGE_NONE): nil for the default (half the area).
private func largeMessageBytes(_ flags: Int32) throws(Failure) -> Int? {
    let log2 = Int(flags >> 8 & 0x3f)
    let none = flags & Int32(DMA_LARGE_NONE) != 0
    guard !(none && log2 != 0) else {
        throw Failure(EINVAL, "dma_assoc: DMA_LARGE_NONE and DMA_LARGE_LOG2 together: give one")
    }
    if none { return 0 }
    guard log2 != 0 else { return nil }
    guard (6...40).contains(log2) else { throw Failure(EINVAL, "dma_assoc: DMA_LARGE_LOG2(\(log2)): give 6 to 40") }
    return 1 << log2
}

extension Registry {
    /// A non-blocking association ended (on its task): records it, or reports its failure as
    /// `EC_EVENT_ASSOC_FAILED`. After sio_close (which reported `ECANCELED` already) it finishes
    /// the close instead: the connection and the descriptor were left to it.
    func associationEnded(_ socket: Int32, on channel: ChannelReference, connection: Connection, area: AreaReference,
                          end: HandshakeEnd, failure: Failure?) {
        _ = try? channel.withOpen("dma_assoc") { state in
            // sio_close sets the flag under this lock while the socket waits for this task.
            guard !end.closeLeftToTask.load(ordering: .sequentiallyConsistent),
                  let entry = state.sockets[socket], entry.connection === connection else { return }
            entry.associating = false
            entry.association = nil
            if let failure {
                Self.forgetFailedAssociation(entry, connection: connection, in: state)
                // The area is the program's again before the event says so: a dma_free that
                // follows the event must not find it in use.
                _ = try? area.withOpen("dma_assoc") { area in area.sockets -= 1 }
                var event = ec_event(type: EC_EVENT_ASSOC_FAILED, socket: socket)
                event.error = failure.errno
                channel.deliver(event, from: channel)
                return
            }
            // Its .connected event may have been taken already (then the area is recorded).
            if entry.area == nil { entry.area = area }
        }
        channel.updateWake()
        if end.closeLeftToTask.load(ordering: .sequentiallyConsistent) {
            // sio_close forgot the connection already, and gave the area back; nothing of it
            // is reported.
            connection.close()
            _ = dmaio_real_close(socket)
        }
    }

    /// A failed association closed the connection; a TCP socket may try again.
    static func forgetFailedAssociation(_ entry: SocketState, connection: Connection, in channel: ChannelState) {
        if case .tcp = entry.kind {
            channel.socketsByConnection[connection.id.rawValue] = nil
            entry.connection = nil
        }
    }
}

/// The associated socket `entry`, for the data calls.
private func associated(_ entry: SocketState, _ operation: String) throws(Failure) -> (Connection, AreaReference) {
    guard let connection = entry.connection, let area = entry.area else {
        throw Failure(ENOTCONN, "\(operation): socket \(entry.descriptor) is not associated: call dma_assoc first")
    }
    return (connection, area)
}

/// Posts the reserved buffer at `buffer` as a send; `token` rides as the Swift cookie. The
/// socket's channel is locked; the area's lock is taken to hand the buffer over.
private func send(_ entry: SocketState, _ buffer: UnsafeMutableRawPointer?, _ size: UInt, _ operation: String,
                  token: (SocketState) -> UInt64) throws(Failure) {
    let (connection, area) = try associated(entry, operation)
    guard let buffer else { throw .null(operation, "buffer") }
    let socket = entry.descriptor
    let address = UInt(bitPattern: buffer)
    let (dmaArea, offset) = try area.withOpen(operation) { area throws(Failure) -> (DMAArea, Int) in
        guard let offset = area.area.offset(of: UnsafeMutableRawPointer(bitPattern: address)!), let reserved = area.reserved[offset] else {
            throw Failure(EINVAL, "\(operation): \(UnsafeRawPointer(bitPattern: address)!) is not the start of a reserved, unsent buffer of the socket's area (sio_reserve it first)")
        }
        guard size > 0, size <= UInt(reserved) else {
            throw Failure(EINVAL, "\(operation): \(size) bytes: the buffer holds \(reserved) (send 1 to \(reserved) bytes)")
        }
        // Checked here, before the buffer is handed over: refused, it stays reserved.
        let largest = connection.peerLargestMessage
        guard size <= UInt(largest) else {
            throw Failure(EMSGSIZE, "\(operation): a message of \(size) bytes exceeds the \(largest) bytes the peer accepts at most "
                + "(half its area by default): send smaller messages, or have the peer allocate a larger area")
        }
        guard connection.isConnected else {
            throw Failure(ECONNRESET, "\(operation): the peer of socket \(socket) went away: sio_close it and connect again")
        }
        area.reserved[offset] = nil
        return (area.area, offset)
    }
    // From here the Swift layer owns the block: on failure it goes back to the area.
    let cookie = token(entry)
    do {
        try swiftCall { () throws(RDMAError) in
            try connection.send(SendBuffer(area: dmaArea, offset: offset, count: Int(size)), cookie: cookie)
        }
    } catch {
        // Refused: no event will come for it.
        if cookie == RequestTable.plain { entry.plainSendsInFlight -= 1 } else { _ = entry.sendRequests.take(cookie) }
        throw error
    }
}

/// `int aio_send(int socket, void *buffer, size_t size, int flags)`. The corresponding verbs
/// call is `ibv_post_send`.
@_cdecl("aio_send")
public func aioSend(_ socket: Int32, _ buffer: UnsafeMutableRawPointer?, _ size: UInt, _ flags: Int32) -> Int32 {
    cCall { () throws(Failure) -> Int32 in
        guard flags == 0 else { throw .flags("aio_send", flags) }
        let address = UInt(bitPattern: buffer)
        try Registry.shared.withSocket(socket, "aio_send") { _, entry throws(Failure) in
            try send(entry, UnsafeMutableRawPointer(bitPattern: address), size, "aio_send") { entry in
                entry.plainSendsInFlight += 1
                return RequestTable.plain
            }
        }
        return 0
    }
}

/// `int aio_send_cb(struct dma_aiocb *cb)`.
@_cdecl("aio_send_cb")
public func aioSendCB(_ block: UnsafeMutablePointer<dma_aiocb>?) -> Int32 {
    cCall { () throws(Failure) -> Int32 in
        guard let block else { throw .null("aio_send_cb", "cb") }
        guard block.pointee.aio_flags == 0 else { throw .flags("aio_send_cb", block.pointee.aio_flags) }
        let registry = Registry.shared
        let socket = block.pointee.aio_fildes
        let named = block.pointee.aio_ec == nil ? nil : try registry.channel(block.pointee.aio_ec, "aio_send_cb")
        let cookie = block.pointee.aio_cookie
        let address = UInt(bitPattern: block.pointee.aio_buf)
        let size = UInt(bitPattern: block.pointee.aio_nbytes)
        try registry.withSocket(socket, "aio_send_cb") { channel, entry throws(Failure) in
            let target = named ?? entry.channel
            let elsewhere = !target.refers(to: entry.channel)
            if elsewhere, !target.isOpen { throw .unknownChannel("aio_send_cb") }
            try send(entry, UnsafeMutableRawPointer(bitPattern: address), size, "aio_send_cb") { entry in
                entry.sendRequests.put(target: target, cookie: cookie)
            }
            if elsewhere {
                try? channel.watchChannel()
                _ = target.addSource(entry.channel, descriptor: channel.channel.fileDescriptor)
            }
        }
        return 0
    }
}

/// `ssize_t aio_recv(int socket, void **buffer, size_t size, int flags)`. The corresponding
/// verbs call is `ibv_poll_cq`.
@_cdecl("aio_recv")
public func aioRecv(_ socket: Int32, _ buffer: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ size: UInt, _ flags: Int32) -> Int {
    cCall { () throws(Failure) -> Int in
        guard flags == 0 else { throw .flags("aio_recv", flags) }
        let (address, length) = try Registry.shared.withSocket(socket, "aio_recv") { _, entry throws(Failure) -> (UInt, Int) in
            let (connection, area) = try associated(entry, "aio_recv")
            guard buffer != nil else { throw .null("aio_recv", "buffer") }
            guard size > 0 else { throw Failure(EINVAL, "aio_recv: size 0: say how many bytes the caller accepts") }
            guard let length = try swiftCall({ () throws(RDMAError) in try connection.nextMessageLength() }) else {
                throw Failure(EAGAIN, literal: "aio_recv: nothing has arrived on the socket yet: wait on its event channel (ec_delay, or poll on ec_to_fd)")
            }
            guard UInt(length) <= size else {
                throw Failure(EMSGSIZE, "aio_recv: the next message has \(length) bytes, more than \(size): call again with a larger size (it stays queued)")
            }
            guard let message = try swiftCall({ () throws(RDMAError) in try connection.receive() }) else {
                throw Failure(EAGAIN, literal: "aio_recv: nothing has arrived on the socket yet: wait on its event channel")
            }
            let detached = message.detach()
            return (try area.withOpen("aio_recv") { area in UInt(bitPattern: area.hold(detached)) }, length)
        }
        buffer?.pointee = UnsafeMutableRawPointer(bitPattern: address)
        return length
    }
}

/// `int aio_recv_cb(struct dma_aiocb *cb)`: 1 when a message was there, 0 when queued.
@_cdecl("aio_recv_cb")
public func aioRecvCB(_ block: UnsafeMutablePointer<dma_aiocb>?) -> Int32 {
    cCall { () throws(Failure) -> Int32 in
        guard let block else { throw .null("aio_recv_cb", "cb") }
        guard block.pointee.aio_flags == 0 else { throw .flags("aio_recv_cb", block.pointee.aio_flags) }
        let registry = Registry.shared
        let socket = block.pointee.aio_fildes
        let named = block.pointee.aio_ec == nil ? nil : try registry.channel(block.pointee.aio_ec, "aio_recv_cb")
        let accepted = UInt(bitPattern: block.pointee.aio_nbytes)
        // The block is the program's, reached only during this call and from the socket's
        // channel under its lock.
        let request = UnsafeRequestBlock(block)
        return try registry.withSocket(socket, "aio_recv_cb") { channel, entry throws(Failure) -> Int32 in
            let block = request.block
            let (connection, area) = try associated(entry, "aio_recv_cb")
            let target = named ?? entry.channel
            let elsewhere = !target.refers(to: entry.channel)
            if elsewhere, !target.isOpen { throw .unknownChannel("aio_recv_cb") }
            guard accepted > 0 else { throw Failure(EINVAL, "aio_recv_cb: aio_nbytes is 0: say how many bytes the request accepts") }
            // A message already there, and no request before this one: served at once.
            if entry.receiveRequests.isEmpty, let length = try swiftCall({ () throws(RDMAError) in try connection.nextMessageLength() }) {
                guard UInt(length) <= accepted else {
                    throw Failure(EMSGSIZE, "aio_recv_cb: the next message has \(length) bytes, more than aio_nbytes \(accepted)")
                }
                if let message = try swiftCall({ () throws(RDMAError) in try connection.receive() }) {
                    let detached = message.detach()
                    let address = try area.withOpen("aio_recv_cb") { area in UInt(bitPattern: area.hold(detached)) }
                    block.pointee.aio_buf = UnsafeMutableRawPointer(bitPattern: address)
                    block.pointee.aio_nbytes = length
                    return 1
                }
            }
            guard connection.isConnected else {
                throw Failure(ECONNRESET, "aio_recv_cb: the peer of socket \(socket) went away and every message was taken")
            }
            entry.receiveRequests.append(.init(block: block, target: target))
            if elsewhere {
                try? channel.watchChannel()
                _ = target.addSource(entry.channel, descriptor: channel.channel.fileDescriptor)
            }
            return 0
        }
    }
}

/// The program's aiocb, carried into the socket's lock.
private struct UnsafeRequestBlock: @unchecked Sendable {
    let block: UnsafeMutablePointer<dma_aiocb>
    init(_ block: UnsafeMutablePointer<dma_aiocb>) { self.block = block }
}
