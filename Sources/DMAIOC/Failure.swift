import CDMAIO
import CRDMA
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

/// How a C call fails: `errno` set, and a sentence for `dma_last_error()`.
///
/// Failures met on the data path as a matter of course (EAGAIN from aio_recv, ENOBUFS from
/// sio_reserve) carry a literal message, so that failing allocates nothing.
struct Failure: Error {
    var errno: Int32
    var message: String
    var literal: StaticString?

    init(_ errno: Int32, _ message: String) {
        self.errno = errno
        self.message = message
    }

    init(_ errno: Int32, literal: StaticString) {
        self.errno = errno
        self.message = ""
        self.literal = literal
    }

    /// The failure for a Swift layer error.
    init(_ error: RDMAError) {
        if error.code == .areaExhausted, error.operation == "sio_reserve" {
            self.init(ENOBUFS, literal: "sio_reserve: the area has no free block that large: in-flight sends, unsent buffers and held receives occupy it; take events (completed sends free their buffers) and try again, or allocate a larger area")
        } else {
            self.init(Self.errno(for: error), "\(error.operation): \(error.message)")
        }
    }

    /// The errno the header documents for a Swift layer error: the one it carries, except for
    /// the codes whose C meaning the header fixes.
    private static func errno(for error: RDMAError) -> Int32 {
        switch error.code {
        case .alreadyAssociated: return EISCONN
        case .areaExhausted: return ENOBUFS
        case .messageTooLarge: return EMSGSIZE
        case .disconnected: return ECONNRESET
        case .memoryLockLimit: return ENOMEM
        case .noDevice, .deviceNotFound: return ENODEV
        case .addressNotAvailable: return error.errno == .addressInUse ? EADDRINUSE : EADDRNOTAVAIL
        default: break
        }
        if let raw = error.errno?.rawValue, raw != 0 { return raw }
        switch error.code {
        case .addressNotAvailable: return EADDRNOTAVAIL
        case .timedOut: return ETIMEDOUT
        case .connectionFailed: return ECONNREFUSED
        case .notConnected: return ENOTCONN
        case .wrongArea: return EXDEV
        case .portNotActive: return ENETDOWN
        case .unsupported: return EOPNOTSUPP
        case .workCompletion: return EIO
        default: return EINVAL
        }
    }

    static func unknownArea(_ operation: String) -> Failure {
        Failure(EINVAL, "\(operation): not a live dma_mem_t (never allocated, or already freed)")
    }

    static func unknownChannel(_ operation: String) -> Failure {
        Failure(EINVAL, "\(operation): not a live ec_t (never created, or already destroyed)")
    }

    static func null(_ operation: String, _ argument: String) -> Failure {
        Failure(EINVAL, "\(operation): \(argument) is NULL")
    }

    static func flags(_ operation: String, _ flags: Int32) -> Failure {
        Failure(EINVAL, "\(operation): unknown flags 0x\(String(flags, radix: 16))")
    }
}

/// Runs the body of a C call: its result, or -1 with errno and the last-error text set.
@inline(__always)
func cCall<T: BinaryInteger>(_ body: () throws(Failure) -> T) -> T {
    do {
        return try body()
    } catch {
        if let literal = error.literal { LastError.set(literal) } else { LastError.set(error.message) }
        Glibc.errno = error.errno
        return -1
    }
}

/// Runs a call into the Swift layers, turning its error into the C call's failure.
@inline(__always)
func swiftCall<T: ~Copyable>(_ body: () throws(RDMAError) -> T) throws(Failure) -> T {
    do throws(RDMAError) {
        return try body()
    } catch {
        throw Failure(error)
    }
}

/// The calling thread's last failure, for `dma_last_error()`: per thread, the text (`current`)
/// and, when it is a copy the library made, that copy (`owned`, freed when replaced or when the
/// thread ends).
enum LastError {
    private static let currentKey: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()
    private static let ownedKey: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key) { free($0) }
        return key
    }()

    private static let empty: StaticString = ""

    static func set(_ message: String) {
        let copy = strdup(message)
        free(pthread_getspecific(ownedKey))
        pthread_setspecific(ownedKey, copy)
        pthread_setspecific(currentKey, copy)
    }

    /// A literal: nothing is copied.
    static func set(_ literal: StaticString) {
        if let owned = pthread_getspecific(ownedKey) {
            free(owned)
            pthread_setspecific(ownedKey, nil)
        }
        pthread_setspecific(currentKey, UnsafeRawPointer(literal.utf8Start))
    }

    static var current: UnsafePointer<CChar> {
        if let text = pthread_getspecific(currentKey) { return UnsafePointer(text.assumingMemoryBound(to: CChar.self)) }
        return UnsafeRawPointer(empty.utf8Start).assumingMemoryBound(to: CChar.self)
    }
}

/// A sentence about the calling thread's last failed call — `dma_last_error`.
@_cdecl("dma_last_error")
public func dmaLastError() -> UnsafePointer<CChar> {
    LastError.current
}
