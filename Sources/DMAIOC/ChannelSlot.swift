import CDMAIO
import CRDMA
import DMAIO
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

/// The place of one event channel in the registry: made once, never freed, reused by the next
/// ec_create once the channel is destroyed (with the next generation).
final class ChannelSlot: Sendable {
    let index: Int
    /// The channel and the sockets bound to it (see ``ChannelState``): every call on the channel
    /// or one of its sockets holds this lock.
    let state = Locked(SlotState())
    /// The channel's queue of translated events: any channel may deliver here.
    let inbox = Locked(Inbox())

    struct SlotState: ~Copyable {
        /// Counts the channels this slot has held; the handle of the open one carries it.
        var generation: UInt32 = 0
        var open: ChannelState?
    }

    init(index: Int) { self.index = index }

    /// ec_create: the slot holds `channel` from now on, under the next generation.
    func open(_ channel: EventChannel, pollDescriptor: Int32, wakeDescriptor: Int32) -> ChannelReference {
        let generation = state.withLock { state -> UInt32 in
            // 0 is no handle's; a slot at UInt32.max is retired (never back on the free list).
            state.generation += 1
            state.open = ChannelState(channel: channel, pollDescriptor: pollDescriptor)
            return state.generation
        }
        inbox.withLock { $0.open(generation: generation, pollDescriptor: pollDescriptor, wakeDescriptor: wakeDescriptor) }
        return ChannelReference(slot: self, generation: generation)
    }

    /// ec_destroy: EBUSY while sockets are bound to the channel. Returns the channel's epoll
    /// descriptor, for the caller to close once no other channel's epoll holds it.
    func close(_ generation: UInt32) throws(Failure) -> Int32 {
        let pollDescriptor = try state.withLock { state throws(Failure) -> Int32 in
            guard state.generation == generation, let open = state.open else { throw .unknownChannel("ec_destroy") }
            guard open.sockets.isEmpty else {
                throw Failure(EBUSY, "ec_destroy: \(open.sockets.count) socket(s) bound to the channel are still open: sio_close them first")
            }
            state.open = nil
            return open.pollDescriptor
        }
        inbox.withLock { $0.close() }
        return pollDescriptor
    }
}

/// A channel as a call holds it: its slot and the generation its handle named. Whether that
/// channel is still open is checked under the slot's lock.
struct ChannelReference: Sendable {
    let slot: ChannelSlot
    let generation: UInt32

    /// The `ec_t` the program holds.
    var handle: UInt { SlotHandle.make(.channel, index: slot.index, generation: generation) }

    func refers(to other: ChannelReference) -> Bool { slot === other.slot && generation == other.generation }

    /// Runs `body` with the open channel, its lock held; EINVAL when it was destroyed.
    func withOpen<T: Sendable>(_ operation: String, _ body: (ChannelState) throws(Failure) -> T) throws(Failure) -> T {
        try slot.state.withLock { state throws(Failure) -> T in
            guard state.generation == generation, let open = state.open else { throw .unknownChannel(operation) }
            return try body(open)
        }
    }

    /// Whether the channel is open (it may be destroyed right after: a hint for error messages).
    var isOpen: Bool { slot.inbox.withLock { $0.isOpen && $0.generation == generation } }

    /// Queues `event` here. An event taken from another channel (`source`) ends that operation's
    /// claim on it (see ``Inbox/addSource(_:descriptor:)``) and shows on the descriptor at
    /// once; one taken here shows when the call that took it ends (``updateWake()``).
    /// Returns whether the event stayed on its own channel.
    @discardableResult
    func deliver(_ event: ec_event, from source: ChannelReference) -> Bool {
        let own = refers(to: source)
        slot.inbox.withLock { inbox in
            guard inbox.isOpen, inbox.generation == generation else { return }  // destroyed: nobody can take it
            inbox.pending.append(event)
            if !own {
                inbox.removeSource(source)
                inbox.updateWake()
            }
        }
        return own
    }

    /// The next translated event, if any.
    func popEvent() -> ec_event? {
        slot.inbox.withLock { inbox -> ec_event? in
            guard inbox.generation == generation else { return nil }
            defer { inbox.updateWake() }
            return inbox.pending.popFirst()
        }
    }

    /// Keeps the wake descriptor readable exactly while events wait.
    func updateWake() {
        slot.inbox.withLock { inbox in
            guard inbox.generation == generation else { return }
            inbox.updateWake()
        }
    }

    /// The `index`th channel whose operations report here, if there are that many.
    func source(at index: Int) -> ChannelReference? {
        slot.inbox.withLock { inbox -> ChannelReference? in
            guard inbox.generation == generation, index < inbox.sources.count else { return nil }
            return inbox.sources[index].channel
        }
    }

    /// Counts an operation of `source` that reports here; `descriptor` is the source's Swift
    /// channel's. False when this channel is destroyed.
    func addSource(_ source: ChannelReference, descriptor: Int32) -> Bool {
        slot.inbox.withLock { inbox -> Bool in
            guard inbox.isOpen, inbox.generation == generation else { return false }
            inbox.addSource(source, descriptor: descriptor)
            return true
        }
    }
}

/// An open event channel: what its lock guards.
final class ChannelState {
    let channel: EventChannel
    /// The descriptor `ec_to_fd` returns: an epoll over the Swift channel's descriptor, the
    /// inbox's wake descriptor, and the Swift channels' descriptors of channels whose operations
    /// report here (never their epolls: those could nest in a cycle, which epoll refuses).
    let pollDescriptor: Int32
    /// Whether the Swift channel's descriptor is in `pollDescriptor` yet (added on first need:
    /// from then on the channel arms its queue whenever it runs dry, which costs a system call).
    var watchingChannel = false
    /// The open sockets bound to the channel, by descriptor.
    var sockets: [Int32: SocketState] = [:]
    /// Which socket each connection on this channel is.
    var socketsByConnection: [UInt32: Int32] = [:]

    init(channel: EventChannel, pollDescriptor: Int32) {
        self.channel = channel
        self.pollDescriptor = pollDescriptor
        sockets.reserveCapacity(16)
        socketsByConnection.reserveCapacity(16)
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

    /// Makes `socket` known under its descriptor: from now on calls find it, and close(), dup2()
    /// and dup3() guard the descriptor (close_guard.c). EISCONN when the descriptor is a DMAIO
    /// socket already, EMFILE when it is too large to be one.
    func register(_ socket: SocketState, _ operation: String) throws(Failure) {
        let descriptor = socket.descriptor
        // After fork() the child's table is empty, but this channel may still list the
        // parent's socket of that number: it stays, and the number is refused.
        guard sockets[descriptor] == nil else {
            throw Failure(EISCONN, "\(operation): socket \(descriptor) already has an event channel")
        }
        switch dmaio_socket_register(descriptor, UInt64(socket.channel.handle)) {
        case 0: break
        case EMFILE:
            throw Failure(EMFILE, "\(operation): descriptor \(descriptor) is not below \(DMAIO_TABLE_CAPACITY), the limit of a DMAIO socket's number")
        case ENOMEM:
            throw Failure(ENOMEM, "\(operation): no memory for the descriptor table")
        default:
            throw Failure(EISCONN, "\(operation): socket \(descriptor) already has an event channel")
        }
        sockets[descriptor] = socket
        if let connection = socket.connection { socketsByConnection[connection.id.rawValue] = descriptor }
    }

    /// Forgets the socket of `descriptor`: the descriptor is the program's again.
    func unregister(_ descriptor: Int32) {
        dmaio_socket_unregister(descriptor)
        sockets[descriptor] = nil
    }
}

/// A channel's queue of translated events, and the other channels whose operations report here.
struct Inbox: ~Copyable {
    var generation: UInt32 = 0
    var isOpen = false
    /// Events translated and waiting to be taken.
    var pending = RingBuffer<ec_event>(capacity: 64)
    /// An eventfd kept readable while `pending` is not empty; it is in the channel's epoll.
    var wakeDescriptor: Int32 = -1
    var wakeIsSet = false
    /// The channel's epoll descriptor, where sources' descriptors are added.
    var pollDescriptor: Int32 = -1
    /// Other channels with operations outstanding that report here (aiocb with aio_ec = this
    /// channel), and how many: taking events here drives them too.
    var sources: [Source] = []

    struct Source {
        var channel: ChannelReference
        /// The source's Swift channel's descriptor, in this channel's epoll.
        var descriptor: Int32
        var operations: Int
    }

    mutating func open(generation: UInt32, pollDescriptor: Int32, wakeDescriptor: Int32) {
        self.generation = generation
        self.pollDescriptor = pollDescriptor
        self.wakeDescriptor = wakeDescriptor
        isOpen = true
        wakeIsSet = false
    }

    mutating func close() {
        isOpen = false
        while pending.popFirst() != nil {}
        sources.removeAll()
        // libc's close itself: the program's descriptors are guarded (close_guard.c).
        _ = dmaio_real_close(wakeDescriptor)
        wakeDescriptor = -1
        pollDescriptor = -1
    }

    /// Keeps the eventfd readable exactly while events wait in `pending`.
    mutating func updateWake() {
        let want = !pending.isEmpty
        guard want != wakeIsSet, wakeDescriptor >= 0 else { return }
        var value: UInt64 = 1
        if want { _ = write(wakeDescriptor, &value, 8) } else { _ = read(wakeDescriptor, &value, 8) }
        wakeIsSet = want
    }

    /// Counts an operation of `source` that reports here; the first one puts the source's Swift
    /// channel's descriptor into this channel's epoll.
    mutating func addSource(_ source: ChannelReference, descriptor sourceDescriptor: Int32) {
        if let index = sources.firstIndex(where: { $0.channel.refers(to: source) }) {
            sources[index].operations += 1
            return
        }
        sources.append(Source(channel: source, descriptor: sourceDescriptor, operations: 1))
        var event = epoll_event(events: EPOLLIN.rawValue, data: epoll_data_t(fd: sourceDescriptor))
        _ = epoll_ctl(pollDescriptor, EPOLL_CTL_ADD, sourceDescriptor, &event)
    }

    mutating func removeSource(_ source: ChannelReference) {
        guard let index = sources.firstIndex(where: { $0.channel.refers(to: source) }) else { return }
        if sources[index].operations > 1 {
            sources[index].operations -= 1
        } else {
            _ = epoll_ctl(pollDescriptor, EPOLL_CTL_DEL, sources[index].descriptor, nil)
            sources.remove(at: index)
        }
    }

    /// `source` was destroyed: nothing more comes from it.
    mutating func forgetSource(_ source: ChannelReference) {
        guard let index = sources.firstIndex(where: { $0.channel.refers(to: source) }) else { return }
        _ = epoll_ctl(pollDescriptor, EPOLL_CTL_DEL, sources[index].descriptor, nil)
        sources.remove(at: index)
    }
}

extension ec_event {
    init(type: ec_event_type, socket: Int32) {
        self.init(type: Int32(type.rawValue), socket: socket, cookie: 0, buffer: nil, size: 0, status: 0, error: 0)
    }
}

// An event is plain data: its buffer is an address handed to the program, never read here.
extension ec_event: @retroactive @unchecked Sendable {}
