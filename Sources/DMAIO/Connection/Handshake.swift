import RDMAVerbs
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// What a step of a connection's set-up needs before it can go on.
enum HandshakeProgress {
    case done
    /// The descriptor must become readable (an rdma_cm event, the peer's handshake bytes).
    case readable(Int32)
    /// The descriptor must become writable (the socket's send buffer was full).
    case writable(Int32)
}

/// A connection's set-up — resolving a route, associating over rdma_cm or over a TCP socket,
/// taking a connection request — written once as steps that never block, and driven either by a
/// thread that sleeps in `poll` between them (``runBlocking()``) or by a task that the watcher
/// thread wakes (``run()``). So an asynchronous connect or association holds no thread, a
/// blocking one holds only its own, and both run the same code.
protocol Handshake: ~Copyable {
    /// Goes as far as it can without blocking.
    mutating func advance() throws(RDMAError) -> HandshakeProgress
    /// When the set-up must be over.
    var deadline: ContinuousClock.Instant { get }
    /// The error for a set-up that did not end by ``deadline``.
    func timedOut() -> RDMAError
}

extension Handshake where Self: ~Copyable {
    /// Runs the set-up to its end on this thread.
    ///
    /// The corresponding C function is `poll`.
    mutating func runBlocking() throws(RDMAError) {
        while true {
            let progress = try advance()
            let left = Swift.max(deadline - ContinuousClock.now, .zero)
            switch progress {
            case .done: return
            case .readable(let fd): guard try waitReadable(fd, timeout: left) else { throw timedOut() }
            case .writable(let fd): guard try waitWritable(fd, timeout: left) else { throw timedOut() }
            }
        }
    }

    /// Runs the set-up to its end, suspending the task (not a thread) between steps. Throws
    /// `CancellationError` when the task is cancelled.
    mutating func run() async throws {
        while true {
            try Task.checkCancellation()
            switch try advance() {
            case .done: return
            case .readable(let fd): guard try await ChannelWatcher.shared.readable(fd, deadline: deadline) else { throw timedOut() }
            case .writable(let fd): guard try await ChannelWatcher.shared.writable(fd, deadline: deadline) else { throw timedOut() }
            }
        }
    }
}

/// One exchange of the TCP-socket handshake (see ``SocketHandshake``): bytes to send, then
/// bytes to receive, over a socket used without blocking (`MSG_DONTWAIT`).
struct SocketExchange {
    private var outgoing: [UInt8] = []
    private var sent = 0
    private(set) var incoming: [UInt8] = []
    private var wanted = 0

    /// Starts an exchange: `bytes` go out, then `count` bytes are awaited.
    mutating func start(sending bytes: [UInt8], receiving count: Int) {
        outgoing = bytes
        sent = 0
        incoming.removeAll(keepingCapacity: true)
        wanted = count
    }

    /// Sends and receives what the socket takes and has; `.done` once the exchange is complete.
    ///
    /// The corresponding C functions are `send` and `recv`.
    mutating func advance(on socket: Int32) throws(RDMAError) -> HandshakeProgress {
        while sent < outgoing.count {
            let written = outgoing.withUnsafeBytes { Glibc.send(socket, $0.baseAddress! + sent, outgoing.count - sent, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
            if written > 0 { sent += written; continue }
            let error = Errno(rawValue: errno)
            if error == .interrupted { continue }
            if error == .resourceTemporarilyUnavailable { return .writable(socket) }
            throw RDMAError(error == .brokenPipe || error == .connectionReset ? .connectionFailed : .systemCall,
                            operation: "dma_assoc", errno: error == .brokenPipe ? .connectionReset : error,
                            message: "sending the handshake over the TCP socket failed: did the peer close it?")
        }
        while incoming.count < wanted {
            var chunk = [UInt8](repeating: 0, count: wanted - incoming.count)
            let read = chunk.withUnsafeMutableBytes { recv(socket, $0.baseAddress!, $0.count, Int32(MSG_DONTWAIT)) }
            if read > 0 {
                incoming += chunk[0..<read]
                continue
            }
            if read == 0 {
                throw RDMAError(.connectionFailed, operation: "dma_assoc", errno: .connectionReset,
                                message: "the peer closed the TCP socket during the handshake (after \(incoming.count) of \(wanted) bytes)")
            }
            let error = Errno(rawValue: errno)
            if error == .interrupted { continue }
            guard error == .resourceTemporarilyUnavailable else {
                throw RDMAError(.connectionFailed, operation: "dma_assoc", errno: error,
                                message: "reading the handshake from the TCP socket failed")
            }
            return .readable(socket)
        }
        return .done
    }
}

extension ConnectionEventChannel {
    /// The next rdma_cm event if one is there, or what to wait for: for a set-up that waits for
    /// the connection manager.
    func nextEvent(orWait progress: inout HandshakeProgress) throws(RDMAError) -> ConnectionEvent? {
        if let event = try nextEvent() { return event }
        progress = .readable(fileDescriptor)
        return nil
    }
}
