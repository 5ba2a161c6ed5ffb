import RDMAVerbs

/// Messages larger than the peer's receive slot (docs/large-messages.md): the sender lends the
/// peer its buffer through a memory window, the receiver reads it into a block of its own area.
/// Under the channel's lock, as the rest of the data path.
extension ConnectionCore {
    // MARK: - Sender

    /// A free window, made on first need; nil when one cannot be had now (all
    /// ``windowLimit`` are lent: an invalidation frees one).
    mutating func takeWindow() throws(RDMAError) -> Int32? {
        if let window = freeWindows.popLast() { return window }
        guard windows.count < windowLimit, let pd = queuePair?.protectionDomain else { return nil }
        windows.append(try MemoryWindow(protectionDomain: pd))
        return Int32(windows.count - 1)
    }

    /// Posts a large message's bind and request: the window lends the peer exactly the
    /// buffer, for reading, on this queue pair; the request (inline) says where it is.
    mutating func postRendezvous(_ send: PendingSend, window: Int32, on queuePair: Borrowed<QueuePair>, from area: Borrowed<DMAArea>) throws(RDMAError) {
        var send = send
        let segment = area.with { $0.segment(at: send.offset, count: send.count) }
        let region = area.with { $0.region }
        let (returned, dones) = takeCreditsAndDones()
        let immediate = WireProtocol.immediate(returning: returned, dones: dones, creditUpdate: false, rendezvous: true)
        let (bind, request) = (requestID(.creditUpdate, slot: Self.bindSlot), requestID(.dataSend))
        let lent = windows[Int(window)]
        let key = try queuePair.with { queuePair throws(RDMAError) -> UInt32 in
            let key = try queuePair.postBind(lent, to: region, address: segment.address, length: send.count, access: .remoteRead,
                                             requestID: bind, signaled: false)
            var descriptor: (UInt64, UInt64, UInt64) = (0, 0, 0)
            try withUnsafeMutableBytes(of: &descriptor) { bytes throws(RDMAError) in
                WireProtocol.RendezvousRequest(length: UInt64(send.count), address: segment.address, key: key).write(to: bytes.baseAddress!)
                let payload = ScatterGatherElement(address: UInt64(UInt(bitPattern: bytes.baseAddress!)), length: UInt32(WireProtocol.RendezvousRequest.size), localKey: 0)
                try queuePair.postSend(payload, requestID: request, operation: .sendWithImmediate(immediate), inline: true)
            }
            return key
        }
        lastPostedSendAddress = UnsafeRawPointer(bitPattern: UInt(segment.address))
        send.window = window
        send.key = key
        inFlight.append(send)
        messagesSent &+= 1
        largeInFlight += 1
        credits -= 1
        sendQueueFree -= 2
    }

    /// A large message's request completed (its bind with it): the buffer stays lent until the
    /// peer's done; a failure gives it back and is reported.
    mutating func requestCompleted(_ send: PendingSend, success: Bool, into events: inout RingBuffer<Event>, status: WorkCompletion.Status) {
        sendQueueFree += 1  // the bind's entry, freed with the request's
        largeInFlight -= 1
        if success {
            awaitingDone.append(send)
            return
        }
        area?.free(send.offset)
        freeWindows.append(send.window)
        if send.reportsEvent { events.append(.sendFailed(connection: id, cookie: send.cookie, status: status)) }
    }

    /// The peer reported `count` of its reads done: that many windows are invalidated (oldest
    /// first). False when the peer reports more than it was lent (a protocol error).
    mutating func receivedDones(_ count: Int) -> Bool {
        donesReceived += count
        return donesReceived <= awaitingDone.count + largeInFlight
    }

    /// A window's invalidation completed: the buffer is the area's again and the send is
    /// reported — sent, or failed when the connection broke first.
    mutating func invalidationCompleted(success: Bool, status: WorkCompletion.Status, into events: inout RingBuffer<Event>) {
        sendQueueFree += 1
        guard let send = invalidating.popFirst() else { return }
        area?.free(send.offset)
        freeWindows.append(send.window)
        guard send.reportsEvent else { return }
        events.append(success ? .sent(connection: id, cookie: send.cookie) : .sendFailed(connection: id, cookie: send.cookie, status: status))
    }

    /// Posts what the rendezvous calls for and the send queue allows: invalidations of
    /// windows the peer is done with, then reads of requests, in order, while the area has
    /// room for them — one read per ``readPiece`` bytes.
    mutating func postRendezvousWork(on queuePair: Borrowed<QueuePair>) throws(RDMAError) {
        while donesReceived > 0, sendQueueFree > 1, let send = awaitingDone.front {
            let request = requestID(.creditUpdate, slot: Self.invalidateSlot)
            try queuePair.with { queuePair throws(RDMAError) in try queuePair.postLocalInvalidate(remoteKey: send.key, requestID: request) }
            _ = awaitingDone.popFirst()
            invalidating.append(send)
            donesReceived -= 1
            sendQueueFree -= 1
        }
        guard let borrowedArea else { return }
        while largeReads < largeReceives.count, sendQueueFree > 1 {
            var receive = largeReceives[largeReads]
            if receive.posted == 0 {
                guard largeBytesInUse + receive.length <= largestMessage,
                      let block = borrowedArea.with({ $0.tryAllocate(receive.length) }) else { return }
                receive.block = block
            }
            let count = min(readPiece, receive.length - receive.posted)
            let segment = borrowedArea.with { $0.segment(at: receive.block + receive.posted, count: count) }
            let request = requestID(.creditUpdate, slot: Self.readSlot)
            do throws(RDMAError) {
                try queuePair.with { queuePair throws(RDMAError) in
                    try queuePair.postRead(into: segment, remoteAddress: receive.address + UInt64(receive.posted), remoteKey: receive.key,
                                           requestID: request)
                }
            } catch {
                // A block no read went to yet is given back; one with reads posted stays with
                // the request (the connection is torn down: its reads flush).
                if receive.posted == 0 { borrowedArea.with { $0.free(receive.block) } }
                throw error
            }
            if receive.posted == 0 { largeBytesInUse += receive.length }
            receive.posted += count
            largeReceives[largeReads] = receive
            if receive.posted == receive.length { largeReads += 1 }
            sendQueueFree -= 1
        }
    }

    /// Large sends that will get no invalidation (the connection ended): reported failed,
    /// their buffers back in the area.
    mutating func failAwaitingDone(into events: inout RingBuffer<Event>) {
        while let send = awaitingDone.popFirst() {
            area?.free(send.offset)
            freeWindows.append(send.window)
            if send.reportsEvent { events.append(.sendFailed(connection: id, cookie: send.cookie, status: .flushed)) }
        }
        donesReceived = 0
    }

    // MARK: - Receiver

    /// A rendezvous request arrived in `slot` (`count` bytes): it takes its place among the
    /// arrivals, hidden with what follows until its read completes; the slot is held until
    /// then. False when the request is malformed or larger than this side accepts.
    mutating func receivedRequest(slot: Int, count: Int, at bytes: UnsafeRawPointer) -> Bool {
        guard let request = WireProtocol.RendezvousRequest(reading: bytes, count: count),
              request.length > UInt64(slotSize), request.length <= UInt64(largestMessage) else { return false }
        largeReceives.append(LargeReceive(requestSlot: Int32(slot), length: Int(request.length), address: request.address, key: request.key))
        arrivals.append(Arrival(slot: Arrival.largeUnread, length: Int(request.length)))
        hiddenArrivals += 1
        return true
    }

    /// A read completed (reads complete in order). When it was its message's last, the
    /// request's slot is re-posted, a credit and a done are owed, and what was hidden behind it
    /// shows. Returns whether arrivals became visible.
    mutating func readCompleted() throws(RDMAError) -> Bool {
        sendQueueFree += 1
        guard largeCompleted < largeReceives.count, largeReceives[largeCompleted].posted > 0 else { return false }
        let receive = largeReceives[largeCompleted]
        piecesCompleted += 1
        guard piecesCompleted == receive.reads(of: readPiece) else { return false }
        piecesCompleted = 0
        largeCompleted += 1
        try postReceive(slot: Int(receive.requestSlot))
        creditsToReturn += 1
        donesToReturn += 1
        return reveal()
    }

    /// Counts hidden arrivals as arrived, up to the first large message whose read has not
    /// completed; a large message shown carries its block.
    private mutating func reveal() -> Bool {
        var shown = false
        while hiddenArrivals > 0 {
            let index = arrivals.count - hiddenArrivals
            var arrival = arrivals[index]
            if arrival.slot == Arrival.largeUnread {
                guard largeCompleted > 0, let receive = largeReceives.popFirst() else { break }
                largeCompleted -= 1
                largeReads -= 1
                arrival.slot = Arrival.large(block: receive.block)
                arrivals[index] = arrival
            }
            hiddenArrivals -= 1
            arrived += 1
            shown = true
        }
        return shown
    }

    /// The next arrival that may be handed out: none while the front one is hidden behind a
    /// large message not read yet.
    @inline(__always)
    mutating func popVisibleArrival() -> Arrival? {
        arrivals.count > hiddenArrivals ? arrivals.popFirst() : nil
    }

    /// A large message handed out: its block is held until released.
    mutating func handOutLarge(_ arrival: Arrival) {
        if let block = arrival.block { largeHeld[block] = arrival.length }
    }

    /// `sio_release` of a large message: its block goes back to the area (waiting reads may
    /// start).
    mutating func releaseLarge(block: Int) {
        guard let length = largeHeld.removeValue(forKey: block) else { return }
        largeBytesInUse -= length
        area?.free(block)
    }
}
