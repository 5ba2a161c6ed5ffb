import CRDMA

/// A 128-bit global identifier: the address of a port in RoCE and InfiniBand.
///
/// On RoCE each IP address of the network interface appears in the GID table; an IPv4 address
/// `a.b.c.d` appears as the IPv4-mapped IPv6 address `::ffff:a.b.c.d`.
///
/// The corresponding C type is `union ibv_gid`.
public struct GID: Sendable, Hashable, CustomStringConvertible {
    /// The 16 bytes in network order.
    public var bytes: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                       UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8)

    public init(_ raw: ibv_gid) { bytes = raw.raw }

    /// A GID from exactly 16 bytes, or nil for any other count.
    public init?(bytes array: some Collection<UInt8>) {
        guard array.count == 16 else { return nil }
        var raw = ibv_gid()
        withUnsafeMutableBytes(of: &raw.raw) { $0.copyBytes(from: array) }
        bytes = raw.raw
    }

    /// `::ffff:a.b.c.d`, the GID under which RoCE v2 reaches an IPv4 address.
    public init(ipv4MappedFrom address: IPv4Address) {
        var raw = ibv_gid()
        withUnsafeMutableBytes(of: &raw.raw) { gid in
            gid[10] = 0xff
            gid[11] = 0xff
            withUnsafeBytes(of: address.networkOrder) { gid[12...].copyBytes(from: $0) }
        }
        bytes = raw.raw
    }

    /// The C union, for calls this layer does not wrap.
    public var raw: ibv_gid {
        var raw = ibv_gid()
        raw.raw = bytes
        return raw
    }

    /// The IPv4 address inside an IPv4-mapped GID, or nil.
    public var ipv4: IPv4Address? {
        withUnsafeBytes(of: bytes) { gid in
            guard gid[0..<10].allSatisfy({ $0 == 0 }), gid[10] == 0xff, gid[11] == 0xff else {
                return nil
            }
            return IPv4Address(networkOrder: gid.loadUnaligned(fromByteOffset: 12, as: UInt32.self))
        }
    }

    public static func == (lhs: GID, rhs: GID) -> Bool {
        withUnsafeBytes(of: lhs.bytes) { l in withUnsafeBytes(of: rhs.bytes) { r in l.elementsEqual(r) } }
    }

    public func hash(into hasher: inout Hasher) {
        withUnsafeBytes(of: bytes) { hasher.combine(bytes: $0) }
    }

    /// Eight groups of four hex digits, as `ibv_devinfo -v` and sysfs show GIDs.
    public var description: String {
        withUnsafeBytes(of: bytes) { gid in
            stride(from: 0, to: 16, by: 2).map { i in
                let group = UInt16(gid[i]) << 8 | UInt16(gid[i + 1])
                let hex = String(group, radix: 16)
                return String(repeating: "0", count: 4 - hex.count) + hex
            }.joined(separator: ":")
        }
    }
}

/// One entry of a port's GID table.
///
/// The corresponding C structure is `struct ibv_gid_entry`.
public struct GIDEntry: Sendable, Hashable {
    /// The kind of a GID.
    public enum GIDType: Sendable, Hashable {
        case infiniband, roceV1, roceV2, other(UInt32)
    }

    public let gid: GID
    public let index: Int
    public let port: Int
    public let type: GIDType
    /// The interface index of the network device the GID belongs to.
    public let networkInterfaceIndex: Int

    init(_ raw: ibv_gid_entry) {
        gid = GID(raw.gid)
        index = Int(raw.gid_index)
        port = Int(raw.port_num)
        switch raw.gid_type {
        case UInt32(IBV_GID_TYPE_IB.rawValue): type = .infiniband
        case UInt32(IBV_GID_TYPE_ROCE_V1.rawValue): type = .roceV1
        case UInt32(IBV_GID_TYPE_ROCE_V2.rawValue): type = .roceV2
        default: type = .other(raw.gid_type)
        }
        networkInterfaceIndex = Int(raw.ndev_ifindex)
    }
}
