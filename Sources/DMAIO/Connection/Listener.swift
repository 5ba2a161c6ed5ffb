import RDMAVerbs

/// Accepts connections on one address — the server side of ``Connection``.
///
/// The listener binds exactly the address it is given (a wildcard address listens on every
/// RDMA device).
///
/// The corresponding C functions are `rdma_bind_addr` and `rdma_listen`.
public final class Listener: @unchecked Sendable {
    private let id: ConnectionID
    /// The event channel accepted connections report to.
    public let events: EventChannel

    /// Binds and listens on `address` (`HOST:PORT`).
    ///
    /// - Throws: ``RDMAError/Code/addressNotAvailable`` when no RDMA device owns the address or
    ///   the port is taken.
    public init(on address: String, events: EventChannel, backlog: Int32 = 128) throws(RDMAError) {
        id = try ConnectionID(channel: try ConnectionEventChannel())
        try id.bind(to: try SocketAddress(parsing: address))
        try id.listen(backlog: backlog)
        self.events = events
    }

    /// The address listened on.
    public var address: SocketAddress? { id.localAddress }

    /// Waits up to `timeout` (forever when nil) for a connection request and takes it. The
    /// connection is complete once it is associated
    /// (``Connection/associate(_:receiveBytes:slotSize:timeout:)``).
    ///
    /// Requests from peers that do not speak this library's protocol are rejected.
    ///
    /// The corresponding C function is `rdma_get_cm_event`.
    public func accept(timeout: Duration? = nil) throws(RDMAError) -> Connection {
        while true {
            let event = try id.channel.expectEvent(.connectRequest, timeout: timeout, while: "waiting for a connection")
            guard let request = event.request else { continue }
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
    }
}
