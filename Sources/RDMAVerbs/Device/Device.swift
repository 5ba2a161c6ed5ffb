import CRDMA

/// An RDMA device known to libibverbs (for soft-RoCE: `rxe0`, ...), as a plain value.
///
/// Listing devices opens nothing; open one with ``Context/init(deviceName:)``.
public struct Device: Sendable, Hashable, CustomStringConvertible {
    /// The kernel's name for the device, e.g. `rxe0` or `mlx5_0`.
    public let name: String
    /// The node GUID in host byte order.
    public let guid: UInt64
    /// The sysfs path of the device, e.g. `/sys/class/infiniband/rxe0`.
    public let sysfsPath: String

    public var description: String { name }

    /// All RDMA devices on this machine, in the order libibverbs reports them.
    ///
    /// An empty array means there is no RDMA device; ``Context/init(deviceName:)`` turns that into
    /// an error that says how to get one.
    ///
    /// The corresponding C functions are `ibv_get_device_list` and `ibv_free_device_list`.
    public static func all() throws(RDMAError) -> [Device] {
        try withDeviceList { list throws(RDMAError) in
            list.map { device in
                Device(
                    name: String(cString: ibv_get_device_name(device)),
                    guid: UInt64(bigEndian: ibv_get_device_guid(device)),
                    sysfsPath: withUnsafeBytes(of: device.pointee.ibdev_path) {
                        String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
                    })
            }
        }
    }
}

/// Runs `body` over the device list and frees the list afterwards.
///
/// The pointers are valid only inside `body`; a device opened there stays open after the list
/// is freed.
func withDeviceList<R>(
    _ body: ([UnsafeMutablePointer<ibv_device>]) throws(RDMAError) -> R
) throws(RDMAError) -> R {
    var count: Int32 = 0
    let list = try nonNull("ibv_get_device_list", "listing RDMA devices (is the rdma-core package installed?)") {
        ibv_get_device_list(&count)
    }
    defer { ibv_free_device_list(list) }
    let devices = (0..<Int(count)).compactMap { list[$0] }
    return try body(devices)
}

extension RDMAError {
    /// There is no RDMA device at all (`operation` is the call that found out).
    static func noDevice(_ operation: String = "ibv_get_device_list") -> RDMAError {
        RDMAError(
            .noDevice, operation: operation,
            message: "no RDMA device found: run rxe-setup up, or rxe-setup vm -- CMD "
                + "(see rxe-setup/README.md)")
    }
}
