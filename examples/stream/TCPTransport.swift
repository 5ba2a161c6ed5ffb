import ExampleSupport
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

/// The same stream over an ordinary TCP socket, for comparison: the sender writes each message
/// from one buffer, the receiver reads each into one buffer (copies through the kernel). The
/// sender's clock runs until the receiver has read the last byte, as RDMA's runs until the last
/// send completed.
struct TCPTransport {
    let size: Int
    let pattern: Pattern?

    func send(to host: String, from source: String?, port: UInt16, limit: Limit, meter: Meter) throws(RDMAError) {
        let socket = try TCPSocket.connect(to: host, port: port, from: source)
        defer { close(socket) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 64)
        defer { buffer.deallocate() }
        let clock = ContinuousClock()
        var deadline: ContinuousClock.Instant? = nil
        var sent = 0
        while true {
            if case .messages(let count) = limit, sent == count { break }
            if case .seconds(let seconds) = limit {
                if deadline == nil { deadline = clock.now + .seconds(seconds) }
                if sent & 63 == 0, clock.now >= deadline! { break }
            }
            pattern?.fill(buffer, sequence: UInt64(sent))
            var offset = 0
            while offset < size {
                let written = Glibc.send(socket, buffer.baseAddress! + offset, size - offset, Int32(MSG_NOSIGNAL))
                offset += try TCPSocket.check("send", written)
            }
            sent += 1
            meter.count()
        }
        // A send returns once the bytes are in the socket's buffer: the clock stops when the
        // receiver has read them all and closed its end (it closes at our end of stream).
        shutdown(socket, Int32(SHUT_WR))
        var byte: UInt8 = 0
        while try TCPSocket.check("recv", Glibc.recv(socket, &byte, 1, 0)) > 0 {}
        meter.finish()
    }

    func receive(on host: String, port: UInt16, meter: Meter, announce: (String) -> Void) throws(RDMAError) {
        let socket = try TCPSocket.acceptOne(on: host, port: port) { announce("  listening on \(host):\(port) (TCP)") }
        defer { close(socket) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 64)
        defer { buffer.deallocate() }
        var sequence: UInt64 = 0
        while true {
            var offset = 0
            while offset < size {
                let count = try TCPSocket.check("recv", Glibc.recv(socket, buffer.baseAddress! + offset, size - offset, Int32(MSG_WAITALL)))
                if count == 0 {
                    guard offset == 0 else {
                        throw RDMAError(.disconnected, operation: "recv", message: "the sender closed in the middle of message \(sequence)")
                    }
                    return  // the sender is done
                }
                offset += count
            }
            if let pattern, !pattern.matches(UnsafeRawBufferPointer(buffer), sequence: sequence) {
                throw RDMAError(.workCompletion, operation: "stream --verify", message: "message \(sequence) differs from what was sent")
            }
            sequence += 1
            meter.count()
        }
    }
}
