import CDMAIO
import CRDMA
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

/// How a C call fails: `errno` set, and a sentence for `dma_last_error()`.
struct Failure: Error {
    var errno: Int32
    var message: String

    init(_ errno: Int32, _ message: String) {
        self.errno = errno
        self.message = message
    }

    /// The errno the header documents for a Swift layer error: the one it carries, except for
    /// the codes whose C meaning the header fixes.
    init(_ error: RDMAError) {
        message = "\(error.operation): \(error.message)"
        switch error.code {
        case .areaExhausted: errno = ENOBUFS
        case .alreadyAssociated: errno = EISCONN
        case .messageTooLarge: errno = EMSGSIZE
        case .disconnected: errno = ECONNRESET
        case .memoryLockLimit: errno = ENOMEM
        case .noDevice, .deviceNotFound: errno = ENODEV
        default:
            if let raw = error.errno?.rawValue, raw != 0 {
                errno = raw
            } else {
                switch error.code {
                case .addressNotAvailable: errno = EADDRNOTAVAIL
                case .timedOut: errno = ETIMEDOUT
                case .connectionFailed: errno = ECONNREFUSED
                case .notConnected: errno = ENOTCONN
                case .wrongArea: errno = EXDEV
                case .portNotActive: errno = ENETDOWN
                case .unsupported: errno = EOPNOTSUPP
                case .workCompletion: errno = EIO
                default: errno = EINVAL
                }
            }
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
        LastError.set(error.message)
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

/// The calling thread's last failure, for `dma_last_error()`: a C string owned per thread.
enum LastError {
    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key) { free($0) }
        return key
    }()

    private static let empty: StaticString = ""

    static func set(_ message: String) {
        let previous = pthread_getspecific(key)
        pthread_setspecific(key, strdup(message))
        free(previous)
    }

    static var current: UnsafePointer<CChar> {
        if let text = pthread_getspecific(key) { return UnsafePointer(text.assumingMemoryBound(to: CChar.self)) }
        return UnsafeRawPointer(empty.utf8Start).assumingMemoryBound(to: CChar.self)
    }
}

/// A sentence about the calling thread's last failed call — `dma_last_error`.
@_cdecl("dma_last_error")
public func dmaLastError() -> UnsafePointer<CChar> {
    LastError.current
}
