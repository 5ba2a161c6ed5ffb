import RDMAVerbs

/// Accepts connections on one address — the server side of ``Connection``.
///
/// The listener binds exactly the address it is given (a wildcard address listens on every
/// RDMA device). A server in a task takes connections as they come:
///
/// ```swift
/// let listener = try Listener(on: "10.99.0.1:7471", events: events)
/// try await withThrowingDiscardingTaskGroup { group in
///     for try await connection in listener.connections {
///         group.addTask { try await serve(connection) }   // associate, then nextMessage/send
///     }
/// }
/// ```
///
/// Taking a request does not wait for the peer to finish connecting: that happens in
/// ``Connection/associate(_:receiveBytes:slotSize:timeout:)-async``, in the connection's own
/// task, so a peer that never completes its connect holds up only its own.
///
/// The corresponding C functions are `rdma_bind_addr` and `rdma_listen`.
public final class Listener: Sendable {
    private let id: ConnectionID
    /// The event channel accepted connections report to.
    public let events: EventChannel

    /// Binds and listens on `address` (`HOST:PORT`).
    ///
    /// - Throws: ``RDMAError/Code/addressNotAvailable`` when no RDMA device owns the address or
    ///   the port is taken.
    public init(on address: String, events: EventChannel, backlog: Int32 = 128) throws(RDMAError) {
        id = try ConnectionID(channel: try ConnectionEventChannel())
        let socketAddress = try SocketAddress(parsing: address)
        try id.bind(to: socketAddress)
        // rdma_cm binds an address no RDMA device owns (127.0.0.1, say) without a device: no
        // RDMA peer could ever reach it.
        guard id.context != nil || socketAddress.isWildcard else {
            throw RDMAError(.addressNotAvailable, operation: "rdma_bind_addr", errno: .addressNotAvailable,
                            message: "no RDMA device owns \(address): listen on an address of an RDMA interface (rdma link show), or on 0.0.0.0")
        }
        try id.listen(backlog: backlog)
        self.events = events
    }

    /// The address listened on (with the port chosen, when port 0 was asked for).
    public var address: SocketAddress? { id.localAddress }

    /// A descriptor for poll/epoll: readable while a connection request is pending (level
    /// triggered; ``acceptPending()`` takes it). It may also turn readable for a request that
    /// ``acceptPending()`` then rejects (a peer that does not speak this library's protocol):
    /// take requests until it returns nil. Owned by the listener: do not close it.
    ///
    /// It is the descriptor of the listener's own rdma_cm event channel
    /// (`rdma_event_channel.fd`).
    public var fileDescriptor: Int32 { id.channel.fileDescriptor }


    /// Waits up to `timeout` (forever when nil) for a connection request and takes it, blocking
    /// the calling thread. The connection is complete once it is associated
    /// (``Connection/associate(_:receiveBytes:slotSize:timeout:)``).
    ///
    /// Requests from peers that do not speak this library's protocol are rejected.
    ///
    /// The corresponding C function is `rdma_get_cm_event`.
    public func accept(timeout: Duration?) throws(RDMAError) -> Connection {
        let clock = ContinuousClock()
        let deadline = timeout.map { clock.now + $0 }
        while true {
            if let connection = try acceptPending() { return connection }
            let left = deadline.map { Swift.max($0 - clock.now, .zero) }
            if let left, left == .zero {
                throw RDMAError(.timedOut, operation: "rdma_get_cm_event", errno: .timedOut,
                                message: "no connection request within \(timeout!): is a client connecting to \(address.map(String.init(describing:)) ?? "this address")?")
            }
            _ = try waitReadable(id.channel.fileDescriptor, timeout: left)
        }
    }

    /// The next connection request, suspending the task (not a thread) until one comes. The
    /// connection is complete once it is associated
    /// (``Connection/associate(_:receiveBytes:slotSize:timeout:)-async``).
    ///
    /// - Throws: `CancellationError` when the task is cancelled.
    ///
    /// The corresponding C function is `rdma_get_cm_event`.
    public func accept() async throws -> Connection {
        while true {
            try Task.checkCancellation()
            if let connection = try acceptPending() { return connection }
            _ = try await ChannelWatcher.shared.readable(id.channel.fileDescriptor, deadline: nil)
        }
    }

    /// Connection requests as they come: `for try await connection in listener.connections`.
    /// The loop ends when its task is cancelled.
    public var connections: Connections { Connections(listener: self) }

    /// The connection requests of a ``Listener``, as an `AsyncSequence`.
    public struct Connections: AsyncSequence, Sendable {
        public typealias Element = Connection
        let listener: Listener

        public struct AsyncIterator: AsyncIteratorProtocol {
            let listener: Listener

            /// The next connection; nil once the task is cancelled.
            public mutating func next() async throws -> Connection? {
                do {
                    return try await listener.accept()
                } catch is CancellationError {
                    return nil
                }
            }
        }

        public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(listener: listener) }
    }

    /// Takes a pending connection request without waiting: nil when none is pending. Requests
    /// from peers that are not DMAIO peers are rejected and skipped. The connection is complete
    /// once it is associated.
    ///
    /// The corresponding C function is `rdma_get_cm_event` on a non-blocking channel.
    public func acceptPending() throws(RDMAError) -> Connection? {
        while let event = try id.channel.nextEvent() {
            guard event.kind == .connectRequest, let request = event.request else { continue }
            let hello: WireProtocol.Hello
            do {
                hello = try WireProtocol.Hello(parsing: event.privateData)
            } catch {
                try? request.reject()
                continue
            }
            try request.migrate(to: try ConnectionEventChannel())
            return try Connection(cmID: request, events: events, peerHello: hello)
        }
        return nil
    }
}
