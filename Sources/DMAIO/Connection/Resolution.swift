import RDMAVerbs

/// The first half of a client's connect: rdma_cm resolves the peer's IP address to a device,
/// a port and a route (``ConnectionEvent/Kind/addressResolved``, then
/// ``ConnectionEvent/Kind/routeResolved``), as steps that never block (``Handshake``).
///
/// The corresponding C functions are `rdma_resolve_addr` and `rdma_resolve_route`.
struct Resolution: Handshake {
    let id: ConnectionID
    let destination: SocketAddress
    let source: SocketAddress?
    let timeout: Duration
    let deadline: ContinuousClock.Instant
    private var step = Step.start

    private enum Step { case start, address, route, done }

    /// Parses `address` (`HOST:PORT`) and `source` (a local IP address) and makes the id.
    init(to address: String, from source: String?, timeout: Duration) throws(RDMAError) {
        destination = try SocketAddress(parsing: address)
        self.source = try source.map { host throws(RDMAError) in try SocketAddress(host: host, port: 0) }
        id = try ConnectionID(channel: try ConnectionEventChannel())
        self.timeout = timeout
        // rdma_cm reports a timeout of its own within `timeout` of each step; this one is a
        // last resort.
        deadline = .now + timeout * 2 + .seconds(1)
    }

    func timedOut() -> RDMAError {
        RDMAError(.timedOut, operation: "rdma_get_cm_event", errno: .timedOut,
                  message: "no route to \(destination) within \(timeout): is the peer up and reachable over RDMA?")
    }

    mutating func advance() throws(RDMAError) -> HandshakeProgress {
        while true {
            switch step {
            case .start:
                try id.startResolvingAddress(of: destination, from: source, timeout: timeout)
                step = .address
            case .address:
                var progress = HandshakeProgress.done
                guard let event = try id.channel.nextEvent(orWait: &progress) else { return progress }
                guard event.kind == .addressResolved else {
                    throw RDMAError(connectionEvent: event, expected: .addressResolved, while: "resolving \(destination)")
                }
                try id.startResolvingRoute(timeout: timeout)
                step = .route
            case .route:
                var progress = HandshakeProgress.done
                guard let event = try id.channel.nextEvent(orWait: &progress) else { return progress }
                guard event.kind == .routeResolved else {
                    throw RDMAError(connectionEvent: event, expected: .routeResolved, while: "resolving the route to \(destination)")
                }
                step = .done
            case .done:
                return .done
            }
        }
    }
}
