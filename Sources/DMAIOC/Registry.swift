import CDMAIO
import CRDMA
import DMAIO
import RDMAVerbs
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Everything the C ABI hands out, by handle or descriptor. C programs hold integers and raw
/// pointers; the registry maps them back to the Swift objects, so that an unknown or freed
/// handle is an error (EINVAL, EBADF), never a crash.
///
/// One lock guards the registry and every entry's fields. Calls that block (dma_assoc,
/// sio_accept, sio_connect, ec_delay's sleep) run without it.
final class Registry: @unchecked Sendable {
    static let shared = Registry()

    private let lock = Mutex(())
    var areas: [UInt: AreaEntry] = [:]
    var channels: [UInt: ChannelEntry] = [:]
    var sockets: [Int32: SocketEntry] = [:]
    /// Handles count up and are never reused, so a freed handle stays unknown.
    private var nextHandle: UInt = 1

    /// Runs `body` with the registry locked.
    func locked<T>(_ body: (Registry) throws(Failure) -> T) throws(Failure) -> T {
        try lock.withLock { _ throws(Failure) -> T in try body(self) }
    }

    func newHandle() -> UInt {
        defer { nextHandle += 1 }
        return nextHandle
    }

    func area(_ handle: OpaquePointer?, _ operation: String) throws(Failure) -> AreaEntry {
        guard let handle, let entry = areas[UInt(bitPattern: handle)] else { throw .unknownArea(operation) }
        return entry
    }

    func channel(_ handle: OpaquePointer?, _ operation: String) throws(Failure) -> ChannelEntry {
        guard let handle, let entry = channels[UInt(bitPattern: handle)] else { throw .unknownChannel(operation) }
        return entry
    }

    func socket(_ descriptor: Int32, _ operation: String) throws(Failure) -> SocketEntry {
        guard let entry = sockets[descriptor] else {
            throw Failure(EBADF, "\(operation): descriptor \(descriptor) is not a DMAIO socket (ec_bind and dma_assoc a TCP socket, or use sio_connect / sio_accept)")
        }
        return entry
    }

    static func handle(_ value: UInt) -> OpaquePointer { OpaquePointer(bitPattern: value)! }

    /// Registers a socket under its descriptor, which close(), dup2() and dup3() then guard
    /// (close_guard.c).
    func addSocket(_ entry: SocketEntry) {
        sockets[entry.descriptor] = entry
        dmaio_guard_set(entry.descriptor, true)
    }

    /// Forgets the socket of `descriptor`: the descriptor is the program's again.
    func removeSocket(_ descriptor: Int32) {
        dmaio_guard_set(descriptor, false)
        sockets[descriptor] = nil
    }
}

/// A DMA area and what the C program holds of it.
final class AreaEntry {
    let handle: UInt
    let area: DMAArea
    /// Reserved, unsent buffers: block offset → bytes reserved.
    var reserved: [Int: Int] = [:]
    /// Received messages handed out and not yet released, by address.
    var held: [UInt: HeldMessage] = [:]
    /// The order they were handed out in, for the FIFO `sio_release`; entries whose message
    /// was released out of order are skipped (their serial no longer matches).
    var heldOrder = RingBuffer<(address: UInt, serial: UInt64)>(capacity: 64)
    /// Bytes of held messages not yet released.
    var heldBytes = 0
    var nextSerial: UInt64 = 0
    /// Open sockets associated with the area.
    var sockets = 0

    struct HeldMessage {
        var message: DetachedMessage
        var serial: UInt64
        /// Bytes already released by a FIFO `sio_release` that ended inside the message.
        var consumed: Int
    }

    init(handle: UInt, area: DMAArea) {
        self.handle = handle
        self.area = area
        reserved.reserveCapacity(64)
        held.reserveCapacity(64)
    }

    /// Keeps a received message for the program.
    func hold(_ message: DetachedMessage) -> UnsafeRawPointer {
        let address = UInt(bitPattern: message.bytes.baseAddress!)
        nextSerial += 1
        held[address] = HeldMessage(message: message, serial: nextSerial, consumed: 0)
        heldOrder.append((address, nextSerial))
        heldBytes += message.bytes.count
        return message.bytes.baseAddress!
    }

    /// Drops order entries of messages already released out of order.
    func trimHeldOrder() {
        while let front = heldOrder.front, held[front.address]?.serial != front.serial { _ = heldOrder.popFirst() }
    }
}

/// An event channel, with the C side's queue of translated events.
final class ChannelEntry {
    let handle: UInt
    let channel: EventChannel
    /// The descriptor `ec_to_fd` returns: an epoll over the Swift channel's descriptor, `wake`,
    /// and the descriptors of channels whose operations report here.
    let pollDescriptor: Int32
    /// An eventfd kept readable while `pending` is not empty.
    let wakeDescriptor: Int32
    var wakeIsSet = false
    /// Whether the Swift channel's descriptor is in `pollDescriptor` yet (added on first need:
    /// from then on the channel arms its queue whenever it runs dry, which costs a system call).
    var watchingChannel = false
    /// Events translated and waiting to be taken.
    var pending = RingBuffer<ec_event>(capacity: 64)
    /// Which socket each connection on this channel is.
    var socketsByConnection: [UInt32: Int32] = [:]
    /// Open sockets bound to the channel.
    var sockets = 0
    /// Other channels with operations outstanding that report here (aiocb with aio_ec = this
    /// channel), and how many: taking events here drives them too.
    var sources: [UInt: Int] = [:]

    init(handle: UInt, channel: EventChannel, pollDescriptor: Int32, wakeDescriptor: Int32) {
        self.handle = handle
        self.channel = channel
        self.pollDescriptor = pollDescriptor
        self.wakeDescriptor = wakeDescriptor
    }

    deinit {
        // libc's close itself: this runs under the registry's lock, which the guarded close()
        // (close_guard.c) would take again, had the program's socket got one of these numbers.
        _ = dmaio_real_close(pollDescriptor)
        _ = dmaio_real_close(wakeDescriptor)
    }

    /// Keeps the eventfd readable exactly while events wait in `pending`.
    func updateWake() {
        let want = !pending.isEmpty
        guard want != wakeIsSet else { return }
        var value: UInt64 = 1
        if want { _ = write(wakeDescriptor, &value, 8) } else { _ = read(wakeDescriptor, &value, 8) }
        wakeIsSet = want
    }

    /// Puts the Swift channel's descriptor into `pollDescriptor`, before anyone sleeps on it.
    func watchChannel() throws(Failure) {
        guard !watchingChannel else { return }
        let descriptor = channel.fileDescriptor
        var event = epoll_event(events: EPOLLIN.rawValue, data: epoll_data_t(fd: descriptor))
        guard epoll_ctl(pollDescriptor, EPOLL_CTL_ADD, descriptor, &event) == 0 else {
            throw Failure(Glibc.errno, "epoll_ctl: watching the event channel's descriptor failed")
        }
        watchingChannel = true
    }

    /// Counts an operation of `source` that reports here; the first one puts the source's
    /// descriptor into this channel's.
    func addSource(_ source: ChannelEntry) {
        let count = sources[source.handle, default: 0]
        sources[source.handle] = count + 1
        if count == 0 {
            var event = epoll_event(events: EPOLLIN.rawValue, data: epoll_data_t(fd: source.pollDescriptor))
            _ = epoll_ctl(pollDescriptor, EPOLL_CTL_ADD, source.pollDescriptor, &event)
        }
    }

    func removeSource(_ source: ChannelEntry) {
        guard let count = sources[source.handle] else { return }
        if count > 1 {
            sources[source.handle] = count - 1
        } else {
            sources[source.handle] = nil
            _ = epoll_ctl(pollDescriptor, EPOLL_CTL_DEL, source.pollDescriptor, nil)
        }
    }
}

/// A descriptor the C program uses as a socket.
final class SocketEntry {
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
    let channel: ChannelEntry
    var connection: Connection?
    /// The area, once associated.
    var area: AreaEntry?
    /// A dma_assoc is running on another thread.
    var associating = false
    /// sio_close is collecting the last events: sends that fail now were cancelled by it.
    var closing = false
    /// A non-blocking dma_assoc (DMA_NONBLOCK) in progress: the task running the handshake and
    /// the area it associates with. It ends in exactly one event, EC_EVENT_CONNECTED or
    /// EC_EVENT_ASSOC_FAILED.
    var association: (task: Task<Void, Never>, area: AreaEntry)?
    /// sio_close came during a non-blocking association: its task closes the connection (and
    /// the descriptor, when `closeDescriptorAtEnd`) when it ends.
    var closeLeftToAssociation = false
    var closeDescriptorAtEnd = true
    /// aio_send_cb requests in flight: where each completion goes.
    var sendRequests = RequestTable()
    /// Plain aio_send calls whose completion event has not come yet.
    var plainSendsInFlight = 0
    /// aio_recv_cb requests waiting for a message, in order.
    var receiveRequests = RingBuffer<ReceiveRequest>(capacity: 8)

    struct ReceiveRequest {
        var block: UnsafeMutablePointer<dma_aiocb>
        var target: ChannelEntry
    }

    init(descriptor: Int32, kind: Kind, channel: ChannelEntry, connection: Connection? = nil) {
        self.descriptor = descriptor
        self.kind = kind
        self.channel = channel
        self.connection = connection
    }
}

/// Outstanding aio_send_cb requests: a token per request rides as the Swift send's cookie and
/// finds the request's channel and cookie when the completion comes back. Slots are reused, so
/// once warm, requests allocate nothing.
struct RequestTable {
    struct Request {
        var target: ChannelEntry?
        var cookie: UInt64
    }

    /// The Swift cookie of a plain aio_send (no request block).
    static let plain = UInt64.max

    private var requests: [Request] = []
    private var free: [Int] = []

    mutating func put(target: ChannelEntry, cookie: UInt64) -> UInt64 {
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

/// A registry object handed to a task: `@unchecked Sendable` because it is touched only under
/// the registry's lock, like every entry.
struct GuardedByRegistry<Value: AnyObject>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

/// The device the C program asked for through the environment, if any.
var environmentDevice: String? {
    guard let value = getenv("DMAIO_DEVICE"), value.pointee != 0 else { return nil }
    return String(cString: value)
}
