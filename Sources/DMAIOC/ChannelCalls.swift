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
        return try Registry.shared.locked { registry throws(Failure) in
            let entry = ChannelEntry(handle: registry.newHandle(), channel: channel, pollDescriptor: epoll, wakeDescriptor: wake)
            registry.channels[entry.handle] = entry
            return Int(entry.handle)
        }
    }
    return handle < 0 ? nil : Registry.handle(UInt(handle))
}

/// `int ec_destroy(ec_t ec)`.
@_cdecl("ec_destroy")
public func ecDestroy(_ ec: OpaquePointer?) -> Int32 {
    cCall { () throws(Failure) -> Int32 in
        try Registry.shared.locked { registry throws(Failure) in
            let entry = try registry.channel(ec, "ec_destroy")
            guard entry.sockets == 0 else {
                throw Failure(EBUSY, "ec_destroy: \(entry.sockets) socket(s) bound to the channel are still open: sio_close them first")
            }
            registry.channels[entry.handle] = nil
            for (_, other) in registry.channels where other.sources[entry.handle] != nil {
                other.sources[entry.handle] = nil
                _ = epoll_ctl(other.pollDescriptor, EPOLL_CTL_DEL, entry.pollDescriptor, nil)
            }
            return 0
        }
    }
}

/// `int ec_bind(ec_t ec, int socket)`: names a TCP socket's event channel, before dma_assoc.
@_cdecl("ec_bind")
public func ecBind(_ ec: OpaquePointer?, _ socket: Int32) -> Int32 {
    cCall { () throws(Failure) -> Int32 in
        try Registry.shared.locked { registry throws(Failure) in
            let channel = try registry.channel(ec, "ec_bind")
            if registry.sockets[socket] != nil {
                throw Failure(EISCONN, "ec_bind: socket \(socket) already has an event channel")
            }
            let type = try swiftCall { () throws(RDMAError) in try Connection.checkSocket(socket, for: "ec_bind") }
            guard type == Int32(SOCK_STREAM.rawValue) else {
                throw Failure(EPROTOTYPE, "ec_bind: descriptor \(socket) is not a stream socket: DMAIO upgrades TCP connections")
            }
            registry.addSocket(SocketEntry(descriptor: socket, kind: .tcp, channel: channel))
            channel.sockets += 1
            return 0
        }
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
        try Registry.shared.locked { registry throws(Failure) in
            let entry = try registry.channel(ec, "ec_next_event")
            guard let event else { throw .null("ec_next_event", "event") }
            guard let next = try registry.takeEvent(entry) else { return 0 }
            event.pointee = next
            return 1
        }
    }
}

/// `int ec_to_fd(ec_t ec)`: readable while events are pending. The corresponding calls are
/// `epoll_ctl` and `ibv_req_notify_cq`.
@_cdecl("ec_to_fd")
public func ecToFD(_ ec: OpaquePointer?) -> Int32 {
    cCall { () throws(Failure) -> Int32 in
        try Registry.shared.locked { registry throws(Failure) in
            let entry = try registry.channel(ec, "ec_to_fd")
            try entry.watchChannel()
            // Events the channel took before it was watched must show on the descriptor.
            if let event = try registry.takeEvent(entry) {
                entry.pending.append(event)
                entry.updateWake()
            }
            return entry.pollDescriptor
        }
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
        let clock = ContinuousClock()
        let deadline = timeoutMilliseconds < 0 ? nil : clock.now + .milliseconds(timeoutMilliseconds)
        while true {
            let descriptor = try Registry.shared.locked { registry throws(Failure) -> Int32 in
                let entry = try registry.channel(ec, "ec_delay")
                guard let event else { throw .null("ec_delay", "event") }
                // Watched first: from then on a channel that runs dry arms its queue, so the
                // sleep below cannot miss a completion.
                try entry.watchChannel()
                if let next = try registry.takeEvent(entry) {
                    event.pointee = next
                    return -1
                }
                return entry.pollDescriptor
            }
            if descriptor < 0 { return 1 }
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
            try Registry.shared.locked { registry throws(Failure) in
                guard let entry = try? registry.channel(ec, "ec_delay") else { return }
                try swiftCall { () throws(RDMAError) in try entry.channel.wokeUp() }
                for handle in entry.sources.keys {
                    if let source = registry.channels[handle] { try swiftCall { () throws(RDMAError) in try source.channel.wokeUp() } }
                }
            }
        }
    }
}
