import CRDMA
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

/// The descriptors behind an ``EventChannel``'s ``EventChannel/fileDescriptor``, and the
/// channel's place in the ``ChannelWatcher``.
///
/// - `poll`: an epoll descriptor over the completion channel, the rdma_cm channel, `wake` and
///   `socketWatch`: what `ec_to_fd` hands out, and what ``EventChannel/wait(timeout:)`` sleeps on;
/// - `wake`: an eventfd the channel keeps readable while events it already took wait to be
///   taken, so that a level-triggered poll() loop never sleeps past one;
/// - `socketWatch`: an epoll descriptor over the TCP sockets of socket connections (one readable
///   means its peer closed or died).
///
/// The corresponding C functions are `epoll_create1`, `eventfd`, `epoll_ctl` and `epoll_wait`.
final class ChannelDescriptors: Sendable {
    let poll: Int32
    let wake: Int32
    let socketWatch: Int32
    let completionChannel: Int32
    let connectionEvents: Int32
    /// The watcher's token for this channel (see ``ChannelWatcher/register(_:)``).
    let watcherToken: UInt64

    init(completionChannel: Int32, connectionEvents: Int32) throws(RDMAError) {
        self.completionChannel = completionChannel
        self.connectionEvents = connectionEvents
        let epoll = try minusOneOrErrno("epoll_create1", "creating the event channel's descriptor") { epoll_create1(Int32(EPOLL_CLOEXEC)) }
        let wake = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard wake >= 0 else {
            close(epoll)
            throw RDMAError(.systemCall, operation: "eventfd", errno: .init(rawValue: errno), message: "creating the event channel's wake descriptor")
        }
        let sockets = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard sockets >= 0 else {
            close(epoll)
            close(wake)
            throw RDMAError(.systemCall, operation: "epoll_create1", errno: .init(rawValue: errno), message: "creating the event channel's socket watch")
        }
        poll = epoll
        self.wake = wake
        socketWatch = sockets
        watcherToken = ChannelWatcher.shared.newToken()
        for fd in [completionChannel, connectionEvents, wake, sockets] {
            var event = epoll_event(events: EPOLLIN.rawValue, data: epoll_data_t(fd: fd))
            if epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) != 0 {
                // Every stored property is set: throwing now runs deinit, which closes them.
                throw RDMAError(.systemCall, operation: "epoll_ctl", errno: .init(rawValue: errno), message: "watching descriptor \(fd)")
            }
        }
    }

    deinit {
        close(poll)
        close(wake)
        close(socketWatch)
    }

    /// Sets or clears the eventfd.
    func setWake(_ on: Bool) {
        var value: UInt64 = 1
        if on { _ = Glibc.write(wake, &value, 8) } else { _ = Glibc.read(wake, &value, 8) }
    }

    /// Whether the watcher thread wakes up for the channel's completions (while tasks wait).
    func listenForCompletions(_ on: Bool) {
        ChannelWatcher.shared.listen(to: completionChannel, token: watcherToken, on)
    }

    /// Sleeps on `poll` up to `timeout` (forever when nil); says which descriptors inside it are
    /// readable.
    ///
    /// The corresponding C function is `epoll_wait`.
    func sleep(timeout: Duration?) throws(RDMAError) -> EventChannel.Readiness {
        let milliseconds: Int32 = timeout.map { Int32(clamping: $0.milliseconds) } ?? -1
        let (count, ready) = withUnsafeTemporaryAllocation(of: epoll_event.self, capacity: 4) { buffer -> (Int32, EventChannel.Readiness) in
            let count = epoll_wait(poll, buffer.baseAddress, 4, milliseconds)
            var ready: EventChannel.Readiness = []
            for index in 0..<Int(Swift.max(count, 0)) {
                let fd = buffer[index].data.fd
                if fd == completionChannel { ready.insert(.completions) } else if fd != wake { ready.insert(.connections) }
            }
            return (count, ready)
        }
        if count < 0 && errno != EINTR {
            throw RDMAError(.systemCall, operation: "epoll_wait", errno: .init(rawValue: errno), message: "waiting on the event channel")
        }
        return ready
    }
}
