import CRDMA

/// The state of one device port.
///
/// The corresponding C structure is `struct ibv_port_attr`.
public struct PortAttributes: Sendable, Hashable {
    /// The logical state of a port.
    public enum State: Sendable, Hashable, CustomStringConvertible {
        case down, initializing, armed, active, activeDeferred, other(UInt32)

        init(_ raw: ibv_port_state) {
            switch raw {
            case IBV_PORT_DOWN: self = .down
            case IBV_PORT_INIT: self = .initializing
            case IBV_PORT_ARMED: self = .armed
            case IBV_PORT_ACTIVE: self = .active
            case IBV_PORT_ACTIVE_DEFER: self = .activeDeferred
            default: self = .other(raw.rawValue)
            }
        }

        public var description: String {
            switch self {
            case .down: "DOWN"
            case .initializing: "INIT"
            case .armed: "ARMED"
            case .active: "ACTIVE"
            case .activeDeferred: "ACTIVE_DEFER"
            case .other(let raw): "state \(raw)"
            }
        }
    }

    /// The port number, from 1.
    public let number: UInt8
    public let state: State
    /// The largest MTU the port supports (`enum ibv_mtu`).
    public let maxMTU: ibv_mtu
    /// The MTU in use on the port (`enum ibv_mtu`).
    public let activeMTU: ibv_mtu
    /// The number of entries in the GID table.
    public let gidTableLength: Int
    /// The port's LID (0 on RoCE, which addresses by GID).
    public let lid: UInt16
    /// Whether the link layer is Ethernet (RoCE) rather than InfiniBand.
    public let isEthernet: Bool
    /// The largest message one work request may carry (`max_msg_sz`): 2 GiB on rxe, 1 GiB on
    /// ConnectX NICs.
    public let maxMessageSize: Int

    init(number: UInt8, _ raw: ibv_port_attr) {
        self.number = number
        state = State(raw.state)
        maxMTU = raw.max_mtu
        activeMTU = raw.active_mtu
        gidTableLength = Int(raw.gid_tbl_len)
        lid = raw.lid
        isEthernet = raw.link_layer == UInt8(IBV_LINK_LAYER_ETHERNET)
        maxMessageSize = Int(raw.max_msg_sz)
    }

    /// The active MTU in bytes (256 ... 4096).
    public var activeMTUBytes: Int { 128 << Int(activeMTU.rawValue) }
}
