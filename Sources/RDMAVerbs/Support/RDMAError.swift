import SystemPackage

/// The one error type of the RDMA layers.
///
/// Every failure names the C call that failed (``operation``), carries the C `errno` when there
/// is one (``errno``), and says in ``message`` what happened and what the user can do about it.
/// ``code`` classifies the failure so that programs can react to it without parsing text.
///
/// ```swift
/// do {
///     let context = try Context(deviceName: "rxe0")
/// } catch let error where error.code == .noDevice {
///     print(error)   // "ibv_get_device_list: no RDMA device found: run rxe-setup up, ..."
/// }
/// ```
public struct RDMAError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What kind of failure this is.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let name: String
        private init(_ name: String) { self.name = name }
        public var description: String { name }

        /// There is no RDMA device on this machine at all.
        public static let noDevice = Code("noDevice")
        /// A device was asked for by name and there is none with that name.
        public static let deviceNotFound = Code("deviceNotFound")
        /// Pinning memory for a registration would exceed `RLIMIT_MEMLOCK`.
        public static let memoryLockLimit = Code("memoryLockLimit")
        /// The device port is not in the ACTIVE state (link down, or not yet up).
        public static let portNotActive = Code("portNotActive")
        /// No RDMA device owns or routes to the given address.
        public static let addressNotAvailable = Code("addressNotAvailable")
        /// An argument was out of range or malformed; nothing was done.
        public static let invalidArgument = Code("invalidArgument")
        /// An operation did not finish within its time limit.
        public static let timedOut = Code("timedOut")
        /// The peer could not be reached, refused, or rejected the connection.
        public static let connectionFailed = Code("connectionFailed")
        /// The connection was closed by the peer or broke.
        public static let disconnected = Code("disconnected")
        /// A work request completed with an error status.
        public static let workCompletion = Code("workCompletion")
        /// The device or driver does not support what was asked.
        public static let unsupported = Code("unsupported")
        /// The DMA area has no free block large enough (in-flight sends and held receives still
        /// occupy it).
        public static let areaExhausted = Code("areaExhausted")
        /// The connection is not (or no longer) connected and associated.
        public static let notConnected = Code("notConnected")
        /// The connection is already associated with an area.
        public static let alreadyAssociated = Code("alreadyAssociated")
        /// A message is larger than the peer's receive slots.
        public static let messageTooLarge = Code("messageTooLarge")
        /// A buffer was used with an area or connection it does not belong to.
        public static let wrongArea = Code("wrongArea")
        /// A C call failed for another reason; see ``RDMAError/errno``.
        public static let systemCall = Code("systemCall")
    }

    /// The classification of the failure.
    public var code: Code
    /// The C function that failed, e.g. `ibv_reg_mr` or `rdma_resolve_addr`.
    public var operation: String
    /// The C error number, when the failure came with one.
    public var errno: Errno?
    /// What happened and what to do about it, in words for a person.
    public var message: String

    public init(_ code: Code, operation: String, errno: Errno? = nil, message: String) {
        self.code = code
        self.operation = operation
        self.errno = errno
        self.message = message
    }

    public var description: String {
        var text = "\(operation): \(message)"
        if let errno { text += " [errno \(errno.rawValue): \(errno)]" }
        return text
    }
}

extension RDMAError {
    /// An error for a failed C call, classified by its errno.
    ///
    /// - Parameters:
    ///   - operation: the C function that failed.
    ///   - errno: the error number it reported.
    ///   - context: what the call was doing, e.g. "registering 1 MiB at 0x7f..."; it starts the
    ///     message, the errno's own text follows.
    static func system(_ operation: String, errno: Errno, _ context: String) -> RDMAError {
        let code: Code
        switch errno {
        case .invalidArgument, .badAddress, .outOfRange: code = .invalidArgument
        case .timedOut: code = .timedOut
        case .notSupported, .noFunction: code = .unsupported
        case .addressNotAvailable, .noSuchAddressOrDevice, Errno(rawValue: 19 /* ENODEV */): code = .addressNotAvailable
        case .connectionRefused, .connectionReset, .noRouteToHost, .networkUnreachable:
            code = .connectionFailed
        default: code = .systemCall
        }
        return RDMAError(code, operation: operation, errno: errno, message: context)
    }

    static func invalidArgument(_ operation: String, _ message: String) -> RDMAError {
        RDMAError(.invalidArgument, operation: operation, errno: .invalidArgument, message: message)
    }
}
