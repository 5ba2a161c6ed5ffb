import CRDMA

/// One event from an rdma_cm event channel, copied out and already acknowledged.
///
/// The corresponding C structure is `struct rdma_cm_event`.
public struct ConnectionEvent: Sendable, CustomStringConvertible {
    /// What happened (`enum rdma_cm_event_type`).
    public enum Kind: Sendable, Hashable, CustomStringConvertible {
        case addressResolved, addressError, routeResolved, routeError
        case connectRequest, connectResponse, connectError, unreachable, rejected
        case established, disconnected, deviceRemoval
        case multicastJoin, multicastError, addressChange, timewaitExit
        case other(UInt32)

        init(_ raw: rdma_cm_event_type) {
            switch raw {
            case RDMA_CM_EVENT_ADDR_RESOLVED: self = .addressResolved
            case RDMA_CM_EVENT_ADDR_ERROR: self = .addressError
            case RDMA_CM_EVENT_ROUTE_RESOLVED: self = .routeResolved
            case RDMA_CM_EVENT_ROUTE_ERROR: self = .routeError
            case RDMA_CM_EVENT_CONNECT_REQUEST: self = .connectRequest
            case RDMA_CM_EVENT_CONNECT_RESPONSE: self = .connectResponse
            case RDMA_CM_EVENT_CONNECT_ERROR: self = .connectError
            case RDMA_CM_EVENT_UNREACHABLE: self = .unreachable
            case RDMA_CM_EVENT_REJECTED: self = .rejected
            case RDMA_CM_EVENT_ESTABLISHED: self = .established
            case RDMA_CM_EVENT_DISCONNECTED: self = .disconnected
            case RDMA_CM_EVENT_DEVICE_REMOVAL: self = .deviceRemoval
            case RDMA_CM_EVENT_MULTICAST_JOIN: self = .multicastJoin
            case RDMA_CM_EVENT_MULTICAST_ERROR: self = .multicastError
            case RDMA_CM_EVENT_ADDR_CHANGE: self = .addressChange
            case RDMA_CM_EVENT_TIMEWAIT_EXIT: self = .timewaitExit
            default: self = .other(raw.rawValue)
            }
        }

        /// The corresponding C function is `rdma_event_str`.
        public var description: String {
            switch self {
            case .addressResolved: "ADDR_RESOLVED"
            case .addressError: "ADDR_ERROR"
            case .routeResolved: "ROUTE_RESOLVED"
            case .routeError: "ROUTE_ERROR"
            case .connectRequest: "CONNECT_REQUEST"
            case .connectResponse: "CONNECT_RESPONSE"
            case .connectError: "CONNECT_ERROR"
            case .unreachable: "UNREACHABLE"
            case .rejected: "REJECTED"
            case .established: "ESTABLISHED"
            case .disconnected: "DISCONNECTED"
            case .deviceRemoval: "DEVICE_REMOVAL"
            case .multicastJoin: "MULTICAST_JOIN"
            case .multicastError: "MULTICAST_ERROR"
            case .addressChange: "ADDR_CHANGE"
            case .timewaitExit: "TIMEWAIT_EXIT"
            case .other(let raw): "event \(raw)"
            }
        }
    }

    public let kind: Kind
    /// The event's status: 0, a negative errno for failures, or the reject reason for
    /// ``Kind/rejected``.
    public let status: Int32
    /// The id the event is about.
    public let id: ConnectionID.ID
    /// For ``Kind/connectRequest``: the listening id that received it.
    public let listenerID: ConnectionID.ID?
    /// For ``Kind/connectRequest``: the new id of the incoming connection, to accept or reject.
    /// Dropping it unanswered rejects the request.
    public let request: ConnectionID?
    /// Private data the peer sent with connect, accept or reject.
    public let privateData: [UInt8]

    public var description: String {
        status == 0 ? "\(kind)" : "\(kind) (status \(status))"
    }

    /// Copies an event and acknowledges it, wrapping a connect request's new id.
    init(_ event: UnsafeMutablePointer<rdma_cm_event>, channel: ConnectionEventChannel) {
        let raw = event.pointee
        kind = Kind(raw.event)
        status = raw.status
        id = ConnectionID.ID(raw.id)
        listenerID = raw.listen_id.map(ConnectionID.ID.init)
        request = kind == .connectRequest ? ConnectionID(incoming: raw.id, channel: channel) : nil
        switch kind {
        case .connectRequest, .connectResponse, .established, .rejected:
            let conn = raw.param.conn
            privateData = conn.private_data.map {
                Array(UnsafeRawBufferPointer(start: $0, count: Int(conn.private_data_len)))
            } ?? []
        default:
            privateData = []
        }
    }
}
