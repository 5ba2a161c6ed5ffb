import CRDMA
import SystemPackage

/// An open RDMA device: the root every other verbs object hangs from.
///
/// A context stays open as long as anything made from it (a protection domain, a completion
/// queue, ...) is alive: each of those holds a strong reference to it, so the device is closed
/// last and exactly once, when the last reference goes away.
///
/// The corresponding C functions are `ibv_open_device` and `ibv_close_device`.
public final class Context: @unchecked Sendable {
    // @unchecked Sendable: the pointer is immutable after init and libibverbs' calls on a context
    // are thread-safe.

    /// The underlying `struct ibv_context *`, for calls this layer does not wrap.
    public let pointer: UnsafeMutablePointer<ibv_context>
    /// The device's name, e.g. `rxe0`.
    public let deviceName: String
    /// Whether this object closes the context; contexts that librdmacm opened belong to it.
    private let ownsContext: Bool

    /// Opens a device by name, or the first device when `deviceName` is nil.
    ///
    /// Fails with ``RDMAError/Code/noDevice`` when the machine has no RDMA device at all and with
    /// ``RDMAError/Code/deviceNotFound`` (listing the devices there are) when none has that name.
    ///
    /// The corresponding C function is `ibv_open_device`.
    public init(deviceName: String? = nil) throws(RDMAError) {
        let (pointer, name) = try withDeviceList {
            devices throws(RDMAError) -> (UnsafeMutablePointer<ibv_context>, String) in
            guard !devices.isEmpty else { throw RDMAError.noDevice() }
            let names = devices.map { String(cString: ibv_get_device_name($0)) }
            let index: Int
            if let deviceName {
                guard let found = names.firstIndex(of: deviceName) else {
                    throw RDMAError(
                        .deviceNotFound, operation: "ibv_open_device",
                        message: "no RDMA device named \(deviceName); devices here: "
                            + names.joined(separator: ", "))
                }
                index = found
            } else {
                index = 0
            }
            let context = try nonNull("ibv_open_device", "opening RDMA device \(names[index])") {
                ibv_open_device(devices[index])
            }
            return (context, names[index])
        }
        self.pointer = pointer
        self.deviceName = name
        self.ownsContext = true
    }

    /// Wraps a context that librdmacm opened (`rdma_cm_id->verbs`); it is never closed here.
    init(borrowing pointer: UnsafeMutablePointer<ibv_context>) {
        self.pointer = pointer
        self.deviceName = String(cString: ibv_get_device_name(pointer.pointee.device))
        self.ownsContext = false
    }

    deinit {
        if ownsContext {
            let result = ibv_close_device(pointer)
            assert(result == 0, "ibv_close_device(\(deviceName)) failed: \(result)")
        }
    }

    /// The device's limits and capabilities.
    ///
    /// The corresponding C function is `ibv_query_device`.
    public func attributes() throws(RDMAError) -> DeviceAttributes {
        var attributes = ibv_device_attr()
        try zeroOrErrno("ibv_query_device", "querying \(deviceName)") {
            ibv_query_device(pointer, &attributes)
        }
        return DeviceAttributes(attributes)
    }

    /// The state and attributes of one port (numbered from 1).
    ///
    /// The corresponding C function is `ibv_query_port`.
    public func port(_ number: UInt8 = 1) throws(RDMAError) -> PortAttributes {
        var attributes = ibv_port_attr()
        try zeroOrErrno("ibv_query_port", "querying port \(number) of \(deviceName)") {
            crdma_query_port(pointer, number, &attributes)
        }
        return PortAttributes(number: number, attributes)
    }

    /// The port's attributes, or ``RDMAError/Code/portNotActive`` if the port is not ACTIVE.
    ///
    /// The corresponding C function is `ibv_query_port`.
    @discardableResult
    public func requireActivePort(_ number: UInt8 = 1) throws(RDMAError) -> PortAttributes {
        let port = try port(number)
        guard port.state == .active else {
            throw RDMAError(
                .portNotActive, operation: "ibv_query_port",
                message: "port \(number) of \(deviceName) is \(port.state), not ACTIVE: bring its "
                    + "network interface up (ip link set DEV up) and check the cable or peer; "
                    + "rxe-setup status shows the ports")
        }
        return port
    }

    /// One entry of a port's GID table, with its type (RoCE v1 or v2).
    ///
    /// The corresponding C function is `ibv_query_gid_ex`.
    public func gid(port: UInt8 = 1, index: Int) throws(RDMAError) -> GIDEntry {
        var entry = ibv_gid_entry()
        try zeroOrErrno("ibv_query_gid_ex", "reading GID \(index) of \(deviceName) port \(port)") {
            ibv_query_gid_ex(pointer, UInt32(port), UInt32(index), &entry, 0)
        }
        return GIDEntry(entry)
    }

    /// The GID table of a port: the valid entries only.
    ///
    /// The corresponding C function is `ibv_query_gid_ex`.
    public func gids(port number: UInt8 = 1) throws(RDMAError) -> [GIDEntry] {
        var entries: [GIDEntry] = []
        try forEachGID(port: number) { entries.append($0); return true }
        return entries
    }

    /// Calls `body` with each valid entry of the GID table, in index order, until it returns
    /// false.
    private func forEachGID(port number: UInt8, _ body: (GIDEntry) -> Bool) throws(RDMAError) {
        let tableSize = Int(try port(number).gidTableLength)
        for index in 0..<tableSize {
            let entry: GIDEntry
            do {
                entry = try gid(port: number, index: index)
            } catch where error.errno == .noData || error.errno == .invalidArgument {
                continue  // an empty slot
            }
            guard body(entry) else { return }
        }
    }

    /// The index of the RoCE v2 GID that carries `ipv4` (as `::ffff:a.b.c.d`), if any.
    ///
    /// This is the GID to use for a connection from that address; RoCE v2 is preferred over v1.
    public func gidIndex(forIPv4 ipv4: IPv4Address, port: UInt8 = 1) throws(RDMAError) -> Int? {
        try gidIndex(of: GID(ipv4MappedFrom: ipv4), port: port)
    }

    /// The index of `wanted` in the GID table, its RoCE v2 entry when there are several.
    ///
    /// Stops at the RoCE v2 entry: a soft-RoCE table has 1024 slots, mostly empty, and each
    /// query is a system call.
    ///
    /// The corresponding C function is `ibv_query_gid_ex`.
    public func gidIndex(of wanted: GID, port number: UInt8 = 1) throws(RDMAError) -> Int? {
        var roceV2: Int?, other: Int?
        try forEachGID(port: number) { entry in
            guard entry.gid == wanted else { return true }
            if entry.type == .roceV2 { roceV2 = entry.index }
            other = other ?? entry.index
            return roceV2 == nil
        }
        return roceV2 ?? other
    }
}
