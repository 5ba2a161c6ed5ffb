import CRDMA
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// An rdma_cm id: the connection manager's handle for one endpoint, like a socket. It resolves
/// IP addresses to an RDMA device and a route, listens, connects and accepts, and moves its
/// queue pair through the connection states.
///
/// rdma_cm picks the device and the RoCE GID from the IP address: nobody types a GID index.
///
/// A client: ``resolve(to:timeout:)``, ``createQueuePair(protectionDomain:sendQueue:receiveQueue:capabilities:sharedReceiveQueue:)``,
/// ``connect(_:timeout:)``. A server: ``bind(to:)``, ``listen(backlog:)``, take
/// ``ConnectionEvent/request`` from a ``ConnectionEvent/Kind/connectRequest`` event, create its
/// queue pair, ``accept(_:timeout:)``.
///
/// Keeps its event channel alive. An incoming request that is dropped unanswered is rejected.
///
/// The corresponding C functions are `rdma_create_id` and `rdma_destroy_id`.
public final class ConnectionID: @unchecked Sendable {
    // @unchecked Sendable: the pointer is immutable after init and everything that changes
    // lives in `state`, inside its lock; librdmacm serialises calls on one id with its own lock.
    /// The identity of an id, as events report it.
    public struct ID: Hashable, Sendable {
        let address: UInt
        init(_ pointer: UnsafeMutablePointer<rdma_cm_id>) { address = UInt(bitPattern: pointer) }
    }

    /// The underlying `struct rdma_cm_id *`.
    public let pointer: UnsafeMutablePointer<rdma_cm_id>
    private let state: Locked<State>

    private struct State {
        var channel: ConnectionEventChannel
        /// An incoming request not yet accepted or rejected.
        var awaitingAnswer: Bool
        var context: Context?
    }

    /// Creates an id on `channel` for reliable-connected (TCP port space) connections.
    ///
    /// The corresponding C function is `rdma_create_id`.
    public init(channel: ConnectionEventChannel) throws(RDMAError) {
        var id: UnsafeMutablePointer<rdma_cm_id>? = nil
        try minusOneOrErrno("rdma_create_id", "creating an rdma_cm id") {
            rdma_create_id(channel.pointer, &id, nil, RDMA_PS_TCP)
        }
        pointer = id!
        state = Locked(State(channel: channel, awaitingAnswer: false, context: nil))
    }

    /// Wraps the id of an incoming connection request.
    init(incoming pointer: UnsafeMutablePointer<rdma_cm_id>, channel: ConnectionEventChannel) {
        self.pointer = pointer
        state = Locked(State(channel: channel, awaitingAnswer: true, context: nil))
    }

    deinit {
        if state.withLock({ $0.awaitingAnswer }) { rdma_reject(pointer, nil, 0) }
        rdma_destroy_id(pointer)
    }

    /// This id's identity, to compare with ``ConnectionEvent/id``.
    public var id: ID { ID(pointer) }

    /// The channel the id's events arrive on.
    public var channel: ConnectionEventChannel { state.withLock { $0.channel } }

    /// The device context the id is bound to, once an address is bound or resolved.
    ///
    /// The context belongs to librdmacm, which keeps it open for the life of the process.
    public var context: Context? {
        state.withLock { state in
            if state.context == nil, let verbs = pointer.pointee.verbs { state.context = Context(borrowing: verbs) }
            return state.context
        }
    }

    /// The device port the id is bound to (valid once bound or resolved).
    public var portNumber: UInt8 { pointer.pointee.port_num }

    /// The local address (after bind, resolve, or for an accepted connection).
    ///
    /// The corresponding C function is `rdma_get_local_addr`.
    public var localAddress: SocketAddress? { SocketAddress(rdma_get_local_addr(pointer)) }

    /// The peer's address (after resolve, or for an accepted connection).
    ///
    /// The corresponding C function is `rdma_get_peer_addr`.
    public var peerAddress: SocketAddress? { SocketAddress(rdma_get_peer_addr(pointer)) }

    /// Binds the id to a local address (and so to the device that owns it).
    ///
    /// Fails with ``RDMAError/Code/addressNotAvailable`` when no RDMA device owns the address.
    ///
    /// The corresponding C function is `rdma_bind_addr`.
    public func bind(to address: SocketAddress) throws(RDMAError) {
        do {
            try address.withSockaddr { sockaddr throws(RDMAError) in
                try minusOneOrErrno("rdma_bind_addr", "binding to \(address)") { rdma_bind_addr(pointer, sockaddr) }
            }
        } catch where error.errno == .addressNotAvailable || error.errno == Errno(rawValue: ENODEV)
            || error.errno == .noSuchAddressOrDevice
        {
            throw RDMAError(
                .addressNotAvailable, operation: "rdma_bind_addr", errno: error.errno,
                message: "no RDMA device owns address \(address.host): use an address of an interface "
                    + "that has an RDMA device (rxe-setup status lists them)")
        } catch where error.errno == .addressInUse {
            throw RDMAError(
                .addressNotAvailable, operation: "rdma_bind_addr", errno: error.errno,
                message: "\(address) is already in use by another rdma_cm listener: pick another port")
        }
    }

    /// The name of the RDMA device that owns the local IP address `host` (port 0 is bound, on
    /// a throwaway id): what `-d` would have to name for a program bound to that address.
    ///
    /// Fails with ``RDMAError/Code/addressNotAvailable`` when no RDMA device owns the address.
    ///
    /// The corresponding C functions are `rdma_create_id` and `rdma_bind_addr`.
    public static func deviceName(owning host: String) throws(RDMAError) -> String {
        let id = try ConnectionID(channel: try ConnectionEventChannel())
        try id.bind(to: try SocketAddress(host: host, port: 0))
        guard let context = id.context else {
            throw RDMAError(.addressNotAvailable, operation: "rdma_bind_addr",
                            message: "\(host) is bound to no RDMA device (a wildcard address?): name a device's own address")
        }
        return context.deviceName
    }

    /// Starts listening for connection requests (after ``bind(to:)``).
    ///
    /// The corresponding C function is `rdma_listen`.
    public func listen(backlog: Int32 = 128) throws(RDMAError) {
        try minusOneOrErrno("rdma_listen", "listening on \(localAddress.map(String.init(describing:)) ?? "an unbound id")") {
            rdma_listen(pointer, backlog)
        }
    }

    /// Starts resolving `destination` to a device and port (event
    /// ``ConnectionEvent/Kind/addressResolved`` follows).
    ///
    /// The corresponding C function is `rdma_resolve_addr`.
    public func startResolvingAddress(
        of destination: SocketAddress, from source: SocketAddress? = nil, timeout: Duration
    ) throws(RDMAError) {
        let ms = Int32(clamping: timeout.milliseconds)
        do {
            try destination.withSockaddr { destinationAddress throws(RDMAError) in
                if let source {
                    try source.withSockaddr { sourceAddress throws(RDMAError) in
                        try minusOneOrErrno("rdma_resolve_addr", "resolving \(destination) from \(source.host)") {
                            rdma_resolve_addr(pointer, sourceAddress, destinationAddress, ms)
                        }
                    }
                } else {
                    try minusOneOrErrno("rdma_resolve_addr", "resolving \(destination)") {
                        rdma_resolve_addr(pointer, nil, destinationAddress, ms)
                    }
                }
            }
        } catch where error.errno == .networkUnreachable || error.errno == .noRouteToHost || error.errno == .addressNotAvailable
            || error.errno == Errno(rawValue: ENODEV)
        {
            throw RDMAError(
                .addressNotAvailable, operation: "rdma_resolve_addr", errno: error.errno,
                message: "no RDMA device routes to \(destination.host)\(source.map { " from \($0.host)" } ?? ""): "
                    + "use an address reached through an interface that has an RDMA device (rxe-setup status lists them)")
        }
    }

    /// Starts resolving the route to the resolved address (event
    /// ``ConnectionEvent/Kind/routeResolved`` follows).
    ///
    /// The corresponding C function is `rdma_resolve_route`.
    public func startResolvingRoute(timeout: Duration) throws(RDMAError) {
        try minusOneOrErrno("rdma_resolve_route", "resolving the route") {
            rdma_resolve_route(pointer, Int32(clamping: timeout.milliseconds))
        }
    }

    /// Resolves `destination`'s address and route, waiting on this id's channel (which must
    /// serve this id alone while it waits).
    ///
    /// The corresponding C functions are `rdma_resolve_addr` and `rdma_resolve_route`.
    public func resolve(to destination: SocketAddress, from source: SocketAddress? = nil, timeout: Duration) throws(RDMAError) {
        try startResolvingAddress(of: destination, from: source, timeout: timeout)
        _ = try channel.expectEvent(.addressResolved, timeout: timeout + .seconds(1), while: "resolving \(destination)")
        try startResolvingRoute(timeout: timeout)
        _ = try channel.expectEvent(.routeResolved, timeout: timeout + .seconds(1), while: "resolving the route to \(destination)")
    }

    /// Creates the id's queue pair, on the device the id is bound to. rdma_cm moves it through
    /// its states when the connection is made.
    ///
    /// The corresponding C function is `rdma_create_qp`.
    public func createQueuePair(
        protectionDomain: ProtectionDomain, sendQueue: CompletionQueue, receiveQueue: CompletionQueue,
        capabilities: QueuePairCapabilities = QueuePairCapabilities(), sharedReceiveQueue: SharedReceiveQueue? = nil
    ) throws(RDMAError) -> QueuePair {
        guard let verbs = pointer.pointee.verbs else {
            throw RDMAError.invalidArgument("rdma_create_qp", "the id is not bound to a device yet: resolve or accept first")
        }
        guard verbs == protectionDomain.context.pointer else {
            throw RDMAError.invalidArgument(
                "rdma_create_qp",
                "the protection domain must be allocated on this id's device context (ConnectionID.context), "
                    + "which librdmacm opened for \(String(cString: ibv_get_device_name(verbs.pointee.device)))")
        }
        return try QueuePair(
            connectionID: self, protectionDomain: protectionDomain, sendQueue: sendQueue,
            receiveQueue: receiveQueue, capabilities: capabilities, sharedReceiveQueue: sharedReceiveQueue)
    }

    /// Sets the ACK timeout of the id's queue pair: how long it waits for an acknowledgement
    /// before sending again, as 4.096 µs × 2^`exponent` (rdma_cm otherwise derives it from the
    /// path's packet lifetime). Call it before ``connect(_:timeout:)`` or ``accept(_:timeout:)``.
    ///
    /// The corresponding C function is `rdma_set_option` (`RDMA_OPTION_ID_ACK_TIMEOUT`).
    public func setAckTimeout(_ exponent: UInt8) throws(RDMAError) {
        guard exponent <= 31 else {
            throw RDMAError.invalidArgument("rdma_set_option", "an ACK timeout exponent is at most 31, not \(exponent)")
        }
        var value = exponent
        try minusOneOrErrno("rdma_set_option", "setting the ACK timeout of an rdma_cm id") {
            rdma_set_option(pointer, Int32(RDMA_OPTION_ID), Int32(RDMA_OPTION_ID_ACK_TIMEOUT), &value, 1)
        }
    }

    /// Connects (after ``resolve(to:from:timeout:)`` and creating the queue pair) and waits for
    /// the connection to be established.
    ///
    /// The corresponding C function is `rdma_connect`.
    public func connect(_ parameters: ConnectionParameters = ConnectionParameters(), timeout: Duration) throws(RDMAError) -> ConnectionEvent {
        try startConnecting(parameters)
        return try channel.expectEvent(.established, timeout: timeout, while: "connecting to \(peerAddress.map(String.init(describing:)) ?? "the peer")")
    }

    /// Sends the connect request (after ``resolve(to:from:timeout:)`` and creating the queue
    /// pair) without waiting: ``ConnectionEvent/Kind/established`` (or a failure) follows on the
    /// id's channel.
    ///
    /// The corresponding C function is `rdma_connect`.
    public func startConnecting(_ parameters: ConnectionParameters = ConnectionParameters()) throws(RDMAError) {
        try parameters.withRaw(limit: ConnectionParameters.maxConnectPrivateData, "rdma_connect") { raw throws(RDMAError) in
            try minusOneOrErrno("rdma_connect", "connecting to \(peerAddress.map(String.init(describing:)) ?? "the peer")") {
                rdma_connect(pointer, &raw)
            }
        }
    }

    /// Accepts an incoming connection (after creating its queue pair) and waits for it to be
    /// established.
    ///
    /// The corresponding C function is `rdma_accept`.
    public func accept(_ parameters: ConnectionParameters = ConnectionParameters(), timeout: Duration) throws(RDMAError) -> ConnectionEvent {
        try startAccepting(parameters)
        return try channel.expectEvent(.established, timeout: timeout, while: "accepting a connection")
    }

    /// Accepts an incoming connection (after creating its queue pair) without waiting:
    /// ``ConnectionEvent/Kind/established`` (or a failure) follows on the id's channel.
    ///
    /// The corresponding C function is `rdma_accept`.
    public func startAccepting(_ parameters: ConnectionParameters = ConnectionParameters()) throws(RDMAError) {
        state.withLock { $0.awaitingAnswer = false }
        try parameters.withRaw(limit: ConnectionParameters.maxAcceptPrivateData, "rdma_accept") { raw throws(RDMAError) in
            try minusOneOrErrno("rdma_accept", "accepting a connection from \(peerAddress.map(String.init(describing:)) ?? "the peer")") {
                rdma_accept(pointer, &raw)
            }
        }
    }

    /// Whether this is an incoming request not yet accepted or rejected.
    public var isAwaitingAnswer: Bool { state.withLock { $0.awaitingAnswer } }

    /// Rejects an incoming connection request.
    ///
    /// The corresponding C function is `rdma_reject`.
    public func reject(privateData: [UInt8] = []) throws(RDMAError) {
        guard privateData.count <= ConnectionParameters.maxAcceptPrivateData else {
            throw RDMAError.invalidArgument("rdma_reject", "\(privateData.count) bytes of private data exceed the limit of 196")
        }
        state.withLock { $0.awaitingAnswer = false }
        let result = privateData.withUnsafeBytes { bytes in
            Result { () throws(RDMAError) in
                try minusOneOrErrno("rdma_reject", "rejecting a connection request") {
                    rdma_reject(pointer, bytes.baseAddress, UInt8(bytes.count))
                }
            }
        }
        _ = try result.get()
    }

    /// Disconnects; both sides then see ``ConnectionEvent/Kind/disconnected`` and the queue
    /// pair's outstanding work requests complete as flushed.
    ///
    /// The corresponding C function is `rdma_disconnect`.
    public func disconnect() throws(RDMAError) {
        try minusOneOrErrno("rdma_disconnect", "disconnecting") { rdma_disconnect(pointer) }
    }

    /// Moves the id (and its future events) to another channel, e.g. to give an accepted
    /// connection a channel of its own.
    ///
    /// The corresponding C function is `rdma_migrate_id`.
    public func migrate(to newChannel: ConnectionEventChannel) throws(RDMAError) {
        try state.withLock { state throws(RDMAError) in
            try minusOneOrErrno("rdma_migrate_id", "moving the id to another event channel") {
                rdma_migrate_id(pointer, newChannel.pointer)
            }
            state.channel = newChannel
        }
    }
}
