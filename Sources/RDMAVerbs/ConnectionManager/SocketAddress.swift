#if canImport(Glibc)
import Glibc
#endif

/// An IPv4 or IPv6 address with a port, as rdma_cm takes it.
///
/// Parses `10.99.0.1:7471`, `[fe80::1%eth0]:7471`, `host.example:7471`, or a host and a port
/// given apart. Names are resolved with `getaddrinfo`.
public struct SocketAddress: Sendable, Hashable, CustomStringConvertible {
    /// The C address (`struct sockaddr_in` or `sockaddr_in6` inside a `sockaddr_storage`).
    public private(set) var storage: sockaddr_storage
    /// The length of the C address.
    public let length: socklen_t

    /// Resolves `host` (a name or numeric address) with `port`.
    ///
    /// The corresponding C function is `getaddrinfo`.
    public init(host: String, port: UInt16) throws(RDMAError) {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_NUMERICSERV
        var result: UnsafeMutablePointer<addrinfo>? = nil
        let status = getaddrinfo(host, String(port), &hints, &result)
        guard status == 0, let first = result else {
            throw RDMAError(
                .addressNotAvailable, operation: "getaddrinfo",
                message: "cannot resolve host \"\(host)\": \(String(cString: gai_strerror(status)))")
        }
        defer { freeaddrinfo(result) }
        var storage = sockaddr_storage()
        withUnsafeMutableBytes(of: &storage) {
            $0.copyMemory(from: UnsafeRawBufferPointer(start: first.pointee.ai_addr, count: Int(first.pointee.ai_addrlen)))
        }
        self.storage = storage
        self.length = first.pointee.ai_addrlen
    }

    /// Parses `host:port` or `[ipv6]:port`.
    public init(parsing text: String) throws(RDMAError) {
        let (host, port) = try Self.split(text)
        try self.init(host: host, port: port)
    }

    /// Copies a C address (`sockaddr_in` or `sockaddr_in6`).
    public init?(_ address: UnsafePointer<sockaddr>) {
        let family = Int32(address.pointee.sa_family)
        let length: Int
        switch family {
        case AF_INET: length = MemoryLayout<sockaddr_in>.size
        case AF_INET6: length = MemoryLayout<sockaddr_in6>.size
        default: return nil
        }
        var storage = sockaddr_storage()
        withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: UnsafeRawBufferPointer(start: address, count: length)) }
        self.storage = storage
        self.length = socklen_t(length)
    }

    /// Splits `host:port` / `[v6]:port` into its parts, checking the port.
    static func split(_ text: String) throws(RDMAError) -> (host: String, port: UInt16) {
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                throw RDMAError.invalidArgument("getaddrinfo", "\"\(text)\" is not an address: write [IPv6]:PORT")
            }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":") else {
                throw RDMAError.invalidArgument("getaddrinfo", "\"\(text)\" is not an address: write HOST:PORT (e.g. 10.99.0.1:7471)")
            }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard !host.isEmpty else {
            throw RDMAError.invalidArgument("getaddrinfo", "\"\(text)\" has no host: write HOST:PORT")
        }
        guard let port = UInt16(portText) else {
            throw RDMAError.invalidArgument("getaddrinfo", "\"\(text)\" has no valid port (1-65535) after the colon")
        }
        return (String(host), port)
    }

    /// The address family, `AF_INET` or `AF_INET6`.
    public var family: Int32 { Int32(storage.ss_family) }

    /// The port in host order.
    public var port: UInt16 {
        withUnsafeBytes(of: storage) { raw in
            family == AF_INET
                ? UInt16(bigEndian: raw.load(as: sockaddr_in.self).sin_port)
                : UInt16(bigEndian: raw.load(as: sockaddr_in6.self).sin6_port)
        }
    }

    /// Whether the address is the wildcard (`0.0.0.0` or `::`): every interface.
    public var isWildcard: Bool {
        withUnsafeBytes(of: storage) { raw in
            family == AF_INET
                ? raw.load(as: sockaddr_in.self).sin_addr.s_addr == 0
                : withUnsafeBytes(of: raw.load(as: sockaddr_in6.self).sin6_addr) { $0.allSatisfy { $0 == 0 } }
        }
    }

    /// The IPv4 address, for an IPv4 socket address.
    public var ipv4: IPv4Address? {
        guard family == AF_INET else { return nil }
        return withUnsafeBytes(of: storage) { IPv4Address(networkOrder: $0.load(as: sockaddr_in.self).sin_addr.s_addr) }
    }

    /// The 16 bytes of the IPv6 address, for an IPv6 socket address (an IPv4-mapped one
    /// included: `::ffff:a.b.c.d`, which is also how RoCE writes an IPv4 GID).
    public var ipv6Bytes: [UInt8]? {
        guard family == AF_INET6 else { return nil }
        return withUnsafeBytes(of: storage) { raw in
            withUnsafeBytes(of: raw.load(as: sockaddr_in6.self).sin6_addr) { Array($0) }
        }
    }

    /// The host part as numeric text.
    public var host: String {
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        withUnsafeBytes(of: storage) { raw in
            if family == AF_INET {
                var address = raw.load(as: sockaddr_in.self).sin_addr
                _ = inet_ntop(AF_INET, &address, &text, socklen_t(text.count))
            } else {
                var address = raw.load(as: sockaddr_in6.self).sin6_addr
                _ = inet_ntop(AF_INET6, &address, &text, socklen_t(text.count))
            }
        }
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public var description: String { family == AF_INET6 ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Calls `body` with the C address.
    @discardableResult
    public func withSockaddr<R>(_ body: (UnsafeMutablePointer<sockaddr>) throws(RDMAError) -> R) throws(RDMAError) -> R {
        var copy = storage
        return try withUnsafeMutablePointer(to: &copy) { pointer throws(RDMAError) in
            try body(UnsafeMutableRawPointer(pointer).assumingMemoryBound(to: sockaddr.self))
        }
    }

    public static func == (lhs: SocketAddress, rhs: SocketAddress) -> Bool {
        lhs.length == rhs.length
            && withUnsafeBytes(of: lhs.storage) { l in
                withUnsafeBytes(of: rhs.storage) { r in l.prefix(Int(lhs.length)).elementsEqual(r.prefix(Int(rhs.length))) }
            }
    }

    public func hash(into hasher: inout Hasher) {
        withUnsafeBytes(of: storage) { hasher.combine(bytes: UnsafeRawBufferPointer(rebasing: $0.prefix(Int(length)))) }
    }
}
