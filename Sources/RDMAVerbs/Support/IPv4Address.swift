#if canImport(Glibc)
import Glibc
#endif

/// An IPv4 address.
public struct IPv4Address: Sendable, Hashable, CustomStringConvertible {
    /// The address as it appears on the wire (network byte order), as in `in_addr.s_addr`.
    public let networkOrder: UInt32

    public init(networkOrder: UInt32) { self.networkOrder = networkOrder }

    /// Parses dotted-quad text such as `10.99.0.1`; nil for anything else.
    ///
    /// The corresponding C function is `inet_pton`.
    public init?(_ text: String) {
        var address = in_addr()
        guard inet_pton(AF_INET, text, &address) == 1 else { return nil }
        networkOrder = address.s_addr
    }

    public var description: String {
        withUnsafeBytes(of: networkOrder) { "\($0[0]).\($0[1]).\($0[2]).\($0[3])" }
    }
}
