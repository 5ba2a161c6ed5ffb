import CRDMA
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// libibverbs and librdmacm report failure in three ways; one helper each, the only places that
// turn a C failure into an RDMAError. Everything that calls into C goes through one of them.

/// The errno of the calling thread, as the C call left it.
@inline(__always)
func currentErrno() -> Errno { Errno(rawValue: Glibc.errno) }

/// Calls that return a pointer, or NULL with `errno` set (`ibv_alloc_pd`, `ibv_reg_mr`,
/// `ibv_create_cq`, ...).
@inline(__always)
func nonNull<T>(
    _ operation: String, _ context: @autoclosure () -> String, _ call: () -> T?
) throws(RDMAError) -> T {
    Glibc.errno = 0
    if let value = call() { return value }
    let errno = Glibc.errno == 0 ? Errno.ioError : currentErrno()
    throw RDMAError.system(operation, errno: errno, context())
}

/// Calls that return 0, or an errno value (`ibv_modify_qp`, `ibv_post_send`, `ibv_dealloc_pd`,
/// `ibv_req_notify_cq`, ...). Some providers return -1 and set errno instead; both are handled.
@inline(__always)
func zeroOrErrno(
    _ operation: String, _ context: @autoclosure () -> String, _ call: () -> Int32
) throws(RDMAError) {
    let result = call()
    if result == 0 { return }
    let errno = result > 0 ? Errno(rawValue: result) : currentErrno()
    throw RDMAError.system(operation, errno: errno, context())
}

/// Calls that return 0 (or a count), or -1 with `errno` set (`rdma_*`, `ibv_get_cq_event`,
/// `poll`, `fcntl`). `EINTR` is retried.
@inline(__always)
@discardableResult
package func minusOneOrErrno(
    _ operation: String, _ context: @autoclosure () -> String, _ call: () -> Int32
) throws(RDMAError) -> Int32 {
    while true {
        let result = call()
        if result != -1 { return result }
        let errno = currentErrno()
        if errno == .interrupted { continue }
        throw RDMAError.system(operation, errno: errno, context())
    }
}

/// Makes a descriptor non-blocking (`fcntl(F_SETFL, O_NONBLOCK)`).
func setNonBlocking(_ fd: Int32, for operation: String) throws(RDMAError) {
    let flags = try minusOneOrErrno("fcntl", "reading the flags of the \(operation) descriptor") {
        fcntl(fd, F_GETFL)
    }
    try minusOneOrErrno("fcntl", "making the \(operation) descriptor non-blocking") {
        fcntl(fd, F_SETFL, flags | O_NONBLOCK)
    }
}

/// Waits until `fd` is readable or `timeout` passes (`poll`). Returns false on timeout.
/// A nil timeout waits forever; a zero timeout only looks.
package func waitReadable(_ fd: Int32, timeout: Duration?) throws(RDMAError) -> Bool {
    try wait(for: POLLIN, on: fd, timeout: timeout)
}

/// Waits until `fd` is writable or `timeout` passes (`poll`), as ``waitReadable(_:timeout:)``.
package func waitWritable(_ fd: Int32, timeout: Duration?) throws(RDMAError) -> Bool {
    try wait(for: POLLOUT, on: fd, timeout: timeout)
}

private func wait(for events: Int32, on fd: Int32, timeout: Duration?) throws(RDMAError) -> Bool {
    var pfd = pollfd(fd: fd, events: Int16(events), revents: 0)
    let milliseconds: Int32 = timeout.map { Int32(clamping: $0.milliseconds) } ?? -1
    let ready = try minusOneOrErrno("poll", "waiting for descriptor \(fd)") {
        poll(&pfd, 1, milliseconds)
    }
    return ready > 0
}

/// Takes the next item from a non-blocking source, sleeping on its descriptor (`poll`) while
/// there is none, for up to `timeout` (forever when nil). Nil when the time runs out.
package func nextOrWait<T>(
    on fd: Int32, timeout: Duration?, _ next: () throws(RDMAError) -> T?
) throws(RDMAError) -> T? {
    let clock = ContinuousClock()
    let deadline = timeout.map { clock.now + $0 }
    while true {
        if let item = try next() { return item }
        let remaining = deadline.map { max($0 - clock.now, .zero) }
        if let remaining, remaining == .zero { return nil }
        _ = try waitReadable(fd, timeout: remaining)
    }
}

extension Duration {
    /// The duration in whole milliseconds, rounded up so that a short wait never becomes 0.
    package var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        let ms = seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
        return max(ms, 0)
    }
}

/// Sizes written for people: "64 KiB", "1 MiB", "1.5 GiB", "100 B".
func formatBytes(_ bytes: Int) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1024, unit < units.count - 1 { value /= 1024; unit += 1 }
    if unit == 0 { return "\(bytes) B" }
    let rounded = (value * 10).rounded() / 10
    return rounded == rounded.rounded()
        ? "\(Int(rounded)) \(units[unit])" : "\(rounded) \(units[unit])"
}
