import CDMAIO
import CRDMA
import DMAIO
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

// ec_create, ec_destroy, ec_bind, ec_next_event, ec_to_fd, ec_delay — see dmaio.h.

/// `ec_t ec_create(int flags)`. The corresponding calls are `ibv_create_comp_channel`,
/// `ibv_create_cq`, `rdma_create_event_channel`, `epoll_create1` and `eventfd`.
@_cdecl("ec_create")
public func ecCreate(_ flags: Int32) -> OpaquePointer? {
    let handle = cCall { () throws(Failure) -> Int in
        guard flags == 0 else { throw .flags("ec_create", flags) }
        let channel = try swiftCall { () throws(RDMAError) in try EventChannel(capacity: 8192, device: environmentDevice) }
        let epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard epoll >= 0 else { throw Failure(Glibc.errno, "ec_create: epoll_create1 failed") }
        let wake = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard wake >= 0 else {
            close(epoll)
            throw Failure(Glibc.errno, "ec_create: eventfd failed")
        }
        var event = epoll_event(events: EPOLLIN.rawValue, data: epoll_data_t(fd: wake))
        _ = epoll_ctl(epoll, EPOLL_CTL_ADD, wake, &event)
        do throws(Failure) {
            return Int(bitPattern: try Registry.shared.openChannel(channel, pollDescriptor: epoll, wakeDescriptor: wake).handle)
        } catch {
            _ = dmaio_real_close(epoll)
            _ = dmaio_real_close(wake)
            throw error
        }
    }
    return handle == -1 ? nil : SlotHandle.pointer(UInt(bitPattern: handle))
}

/// `int ec_destroy(ec_t ec)`.
@_cdecl("ec_destroy")
public func ecDestroy(_ ec: OpaquePointer?) -> Int32 {
    cCall { () throws(Failure) -> Int32 in
        let registry = Registry.shared
        try registry.closeChannel(try registry.channel(ec, "ec_destroy"))
        return 0
    }
}

/// `int ec_bind(ec_t ec, int socket)`: names a TCP socket's event channel, before dma_assoc.
@_cdecl("ec_bind")
public func ecBind(_ ec: OpaquePointer?, _ socket: Int32) -> Int32 {
    cCall { () throws(Failure) -> Int32 in
        let reference = try Registry.shared.channel(ec, "ec_bind")
        try reference.withOpen("ec_bind") { channel throws(Failure) in
            if Registry.shared.socketChannel(socket) != nil {
                throw Failure(EISCONN, "ec_bind: socket \(socket) already has an event channel")
            }
            let type = try swiftCall { () throws(RDMAError) in try Connection.checkSocket(socket, for: "ec_bind") }
            guard type == Int32(SOCK_STREAM.rawValue) else {
                throw Failure(EPROTOTYPE, "ec_bind: descriptor \(socket) is not a stream socket: DMAIO upgrades TCP connections")
            }
            try channel.register(SocketState(descriptor: socket, kind: .tcp, channel: reference), "ec_bind")
        }
        return 0
    }
}

/// EBADF for a descriptor that is not open, ENOTSOCK for one that is not a socket.
func checkSocketDescriptor(_ socket: Int32, _ operation: String) throws(Failure) {
    _ = try swiftCall { () throws(RDMAError) in try Connection.checkSocket(socket, for: operation) }
}

/// `int ec_next_event(ec_t ec, struct ec_event *event)`: 1 with the event, 0 when none.
/// The corresponding verbs call is `ibv_poll_cq`.
@_cdecl("ec_next_event")
public func ecNextEvent(_ ec: OpaquePointer?, _ event: UnsafeMutablePointer<ec_event>?) -> Int32 {
    cCall { () throws(Failure) -> Int32 in
        let registry = Registry.shared
        let reference = try registry.channel(ec, "ec_next_event")
        guard let event else {
            _ = try reference.withOpen("ec_next_event") { _ in 0 }  // an unknown channel first
            throw .null("ec_next_event", "event")
        }
        guard let next = try registry.takeEvent(reference, "ec_next_event") else { return 0 }
        event.pointee = next
        return 1
    }
}

/// `int ec_to_fd(ec_t ec)`: readable while events are pending. The corresponding calls are
/// `epoll_ctl` and `ibv_req_notify_cq`.
@_cdecl("ec_to_fd")
public func ecToFD(_ ec: OpaquePointer?) -> Int32 {
    cCall { () throws(Failure) -> Int32 in
        let registry = Registry.shared
        let reference = try registry.channel(ec, "ec_to_fd")
        let descriptor = try reference.withOpen("ec_to_fd") { channel throws(Failure) -> Int32 in
            try channel.watchChannel()
            // Events the channel took before it was watched must show on the descriptor.
            try registry.drain(channel, reference)
            return channel.pollDescriptor
        }
        reference.updateWake()
        return descriptor
    }
}

/// `int ec_delay(ec_t ec, struct ec_event *event, int timeout_ms)`: 1 with an event, 0 on
/// timeout. Sleeps on the channel's descriptor (`poll`) between looks.
@_cdecl("ec_delay")
public func ecDelay(_ ec: OpaquePointer?, _ event: UnsafeMutablePointer<ec_event>?, _ timeoutMilliseconds: Int32) -> Int32 {
    cCall { () throws(Failure) -> Int32 in
        guard timeoutMilliseconds >= -1 else {
            throw Failure(EINVAL, "ec_delay: timeout \(timeoutMilliseconds) ms: give -1 (forever), 0 (only look) or a positive time")
        }
        let registry = Registry.shared
        let reference = try registry.channel(ec, "ec_delay")
        let clock = ContinuousClock()
        let deadline = timeoutMilliseconds < 0 ? nil : clock.now + .milliseconds(timeoutMilliseconds)
        while true {
            // Watched first: from then on a channel that runs dry arms its queue, so the sleep
            // below cannot miss a completion.
            let descriptor = try reference.withOpen("ec_delay") { channel throws(Failure) -> Int32 in
                try channel.watchChannel()
                return channel.pollDescriptor
            }
            guard let event else { throw .null("ec_delay", "event") }
            if let next = try registry.takeEvent(reference, "ec_delay") {
                event.pointee = next
                return 1
            }
            // Wakes up at least once per keepalive interval: the next look probes quiet connections.
            var milliseconds = Int32(clamping: PeerTimeout.keepAliveInterval.milliseconds)
            if let deadline {
                let left = deadline - clock.now
                if left <= .zero { return 0 }
                milliseconds = min(milliseconds, Int32(clamping: left.milliseconds))
            }
            var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
            if poll(&entry, 1, milliseconds) < 0 {
                let error = Glibc.errno
                throw Failure(error, error == EINTR ? "ec_delay: interrupted by a signal" : "ec_delay: poll failed")
            }
            try reference.withOpen("ec_delay") { channel throws(Failure) in
                try swiftCall { () throws(RDMAError) in try channel.channel.wokeUp() }
            }
            var index = 0
            while let source = reference.source(at: index) {
                index += 1
                try? source.withOpen("ec_delay") { channel throws(Failure) in
                    try swiftCall { () throws(RDMAError) in try channel.channel.wokeUp() }
                }
            }
        }
    }
}
