import CDMAIO
import DMAIO
import RDMAVerbs
import Synchronization

/// A descriptor the C program uses as a socket. It lives in its channel's state
/// (``ChannelState/sockets``): its channel's lock guards it.
final class SocketState {
    enum Kind {
        /// The program's TCP socket (ec_bind), upgraded by dma_assoc.
        case tcp
        /// A connection made through rdma_cm (sio_connect, sio_accept); the descriptor is an
        /// eventfd standing for it.
        case connectionManager
        /// A listening rdma_cm id (sio_listen).
        case listener(Listener)
    }

    let descriptor: Int32
    let kind: Kind
    /// The channel the socket is bound to (its state lives there).
    let channel: ChannelReference
    var connection: Connection?
    /// The area, once associated.
    var area: AreaReference?
    /// A dma_assoc is running on another thread.
    var associating = false
    /// sio_set_resume_deadline's before the connection exists (a TCP socket before dma_assoc).
    var resumeDeadline: Duration?
    /// sio_close is collecting the last events: sends that fail now were cancelled by it.
    var closing = false
    /// A non-blocking dma_assoc (DMA_NONBLOCK) in progress: the task running the handshake, the
    /// area it associates with and what the task must do when it ends. It ends in exactly one
    /// event, EC_EVENT_CONNECTED or EC_EVENT_ASSOC_FAILED.
    var association: (task: Task<Void, Never>, area: AreaReference, end: HandshakeEnd)?
    /// aio_send_cb requests in flight: where each completion goes.
    var sendRequests = RequestTable()
    /// Plain aio_send calls whose completion event has not come yet.
    var plainSendsInFlight = 0
    /// aio_recv_cb requests waiting for a message, in order.
    var receiveRequests = RingBuffer<ReceiveRequest>(capacity: 8)

    struct ReceiveRequest {
        var block: UnsafeMutablePointer<dma_aiocb>
        var target: ChannelReference
    }

    init(descriptor: Int32, kind: Kind, channel: ChannelReference, connection: Connection? = nil) {
        self.descriptor = descriptor
        self.kind = kind
        self.channel = channel
        self.connection = connection
    }
}

/// What a DMA_NONBLOCK handshake's task does when it ends, shared between the task and the
/// socket. sio_close during the handshake sets `closeLeftToTask` (under the channel's lock,
/// while the socket still waits for the task): the task then closes the connection and the
/// descriptor once it has stopped using them, whether or not the channel still exists.
final class HandshakeEnd: Sendable {
    let closeLeftToTask = Atomic<Bool>(false)
}

/// Outstanding aio_send_cb requests: a token per request rides as the Swift send's cookie and
/// finds the request's channel and cookie when the completion comes back. Slots are reused, so
/// once warm, requests allocate nothing.
struct RequestTable {
    struct Request {
        var target: ChannelReference?
        var cookie: UInt64
    }

    /// The Swift cookie of a plain aio_send (no request block).
    static let plain = UInt64.max

    private var requests: [Request] = []
    private var free: [Int] = []

    mutating func put(target: ChannelReference, cookie: UInt64) -> UInt64 {
        if let index = free.popLast() {
            requests[index] = Request(target: target, cookie: cookie)
            return UInt64(index)
        }
        requests.append(Request(target: target, cookie: cookie))
        return UInt64(requests.count - 1)
    }

    mutating func take(_ token: UInt64) -> Request? {
        guard token < UInt64(requests.count), requests[Int(token)].target != nil else { return nil }
        let request = requests[Int(token)]
        requests[Int(token)].target = nil
        free.append(Int(token))
        return request
    }

    /// Every request still outstanding (when the socket closes).
    mutating func takeAll() -> [Request] {
        let outstanding = requests.filter { $0.target != nil }
        requests.removeAll()
        free.removeAll()
        return outstanding
    }
}
