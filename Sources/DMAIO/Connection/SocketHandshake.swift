import RDMAVerbs
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The handshake two peers run over a connected TCP socket to bring a reliable-connected queue
/// pair up by hand — what `dma_assoc` does on an ordinary socket, the way `ibv_rc_pingpong` and
/// perftest exchange their numbers.
///
/// Three exchanges, each side sending first and then reading the peer's:
/// 1. a ``Hello``: what each side grants and needs. Each side then knows how many receives it
///    must post — its own data slots plus room for the peer's credit updates — and creates its
///    queue pair that large;
/// 2. the queue pair number and the credits taken (``QueuePairNumbers``): how many of the
///    peer's credits this side uses, at most the peer's grant. Each side posts its receive
///    slots and moves its queue pair to RTR and RTS;
/// 3. one ``readyByte``: data may flow once the peer's has arrived, so no message can reach a
///    queue pair that is not ready.
///
/// After that the socket carries one thing: a ``Resume``, when a side's queue pair failed and
/// the connection resumes on a new one (``ConnectionCore/Resumption``), again followed by one
/// ready byte each way. Anything else is a protocol error; the socket's end is the connection's.
///
/// The hello is 48 bytes, big-endian:
///
/// ```
///  0  magic "DMAS"          4  version (4)     6  MTU (ibv_mtu, 1...5)    7  0
///  8  largest message, high 32 bits          12  first PSN      16  GID (16 bytes)
/// 32  LID (16 bits)        34  0 (16 bits)    36  credits granted
/// 40  slot size            44  largest message, low 32 bits
/// ```
///
/// The largest message is the one the side accepts (``WireProtocol``'s rendezvous), at most
/// 1 TiB.
///
/// Credits: each side grants one credit per data slot it has (what `dma_assoc`'s size says),
/// takes as many of the peer's credits as it may (at most as many as it grants, unless
/// `sendCredits` says otherwise), and posts one more slot per credit taken, to absorb the peer's
/// credit updates (see ``WireProtocol``): unlike rdma_cm's one-shot exchange, both sides learn
/// the peer's grant before creating their queue pairs, so neither has to shrink its grant; the
/// second exchange tells each side how much of its grant the peer uses. (Version 3 sent the
/// queue pair number alone, and took the whole grant.)
enum SocketHandshake {
    static let magic: UInt32 = 0x444D_4153  // "DMAS"
    /// 5: resume (``Resume``). 4: credits taken (``QueuePairNumbers``).
    static let version: UInt16 = 5
    static let helloSize = 48
    static let readyByte: UInt8 = 0x52  // "R"

    struct Hello: Equatable {
        var mtu: UInt8
        var endpoint: QueuePairEndpoint
        var credits: UInt32
        var slotSize: UInt32
        var largestMessage: UInt64

        var bytes: [UInt8] {
            var bytes = [UInt8](repeating: 0, count: SocketHandshake.helloSize)
            func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
                withUnsafeBytes(of: value.bigEndian) { bytes.replaceSubrange(offset..<offset + $0.count, with: $0) }
            }
            put(SocketHandshake.magic, at: 0)
            put(SocketHandshake.version, at: 4)
            bytes[6] = mtu
            put(UInt32(truncatingIfNeeded: largestMessage >> 32), at: 8)
            put(endpoint.packetSequenceNumber, at: 12)
            withUnsafeBytes(of: endpoint.gid.bytes) { bytes.replaceSubrange(16..<32, with: $0) }
            put(endpoint.lid, at: 32)
            put(credits, at: 36)
            put(slotSize, at: 40)
            put(UInt32(truncatingIfNeeded: largestMessage), at: 44)
            return bytes
        }

        init(mtu: UInt8, endpoint: QueuePairEndpoint, credits: UInt32, slotSize: UInt32, largestMessage: UInt64) {
            self.mtu = mtu
            self.endpoint = endpoint
            self.credits = credits
            self.slotSize = slotSize
            self.largestMessage = largestMessage
        }

        /// Parses and checks a peer's hello; anything else is refused with
        /// ``RDMAError/Code/connectionFailed`` (errno `EPROTO`) and a message saying what is wrong.
        init(parsing data: some Collection<UInt8>) throws(RDMAError) {
            let bytes = Array(data)
            func refuse(_ what: String) -> RDMAError {
                RDMAError(.connectionFailed, operation: "dma_assoc", errno: .protocolError,
                          message: "the peer's handshake \(what): is the peer a DMAIO program calling dma_assoc on its end of the socket?")
            }
            guard bytes.count == SocketHandshake.helloSize else { throw refuse("has \(bytes.count) bytes, not \(SocketHandshake.helloSize)") }
            func word<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
                bytes[offset..<offset + MemoryLayout<T>.size].reduce(T.zero) { $0 << 8 | T($1) }
            }
            guard word(UInt32.self, at: 0) == SocketHandshake.magic else { throw refuse("does not start with the DMAIO magic") }
            let version = word(UInt16.self, at: 4)
            guard version == SocketHandshake.version else { throw refuse("is version \(version); this side speaks \(SocketHandshake.version)") }
            let mtu = bytes[6]
            guard (1...5).contains(mtu) else { throw refuse("names MTU code \(mtu), not 1...5") }
            // Reserved bytes are 0: a later version may give them a meaning only with a new version.
            guard bytes[7] == 0, word(UInt16.self, at: 34) == 0 else {
                throw refuse("has reserved bytes that are not 0")
            }
            let psn = word(UInt32.self, at: 12)
            guard psn <= 0xFF_FFFF else { throw refuse("names PSN \(psn), not a 24-bit number") }
            let credits = word(UInt32.self, at: 36)
            guard credits >= 1, credits <= WireProtocol.creditMask else { throw refuse("grants \(credits) credits") }
            let slotSize = word(UInt32.self, at: 40)
            guard slotSize >= 64, slotSize <= 1 << 30, slotSize & (slotSize - 1) == 0 else {
                throw refuse("announces \(slotSize)-byte slots, not a power of two from 64 B to 1 GiB")
            }
            let largestMessage = UInt64(word(UInt32.self, at: 8)) << 32 | UInt64(word(UInt32.self, at: 44))
            guard largestMessage >= slotSize, largestMessage <= UInt64(WireProtocol.largestMessageLimit) else {
                throw refuse("accepts messages up to \(largestMessage) bytes, less than its \(slotSize)-byte slots or more than 1 TiB")
            }
            let gid = GID(bytes: bytes[16..<32])!
            self.mtu = mtu
            self.endpoint = QueuePairEndpoint(queuePairNumber: 0, packetSequenceNumber: psn, gid: gid, lid: word(UInt16.self, at: 32))
            self.credits = credits
            self.slotSize = slotSize
            self.largestMessage = largestMessage
        }
    }

    /// The second exchange, 8 bytes, big-endian: the queue pair number (24 bits, not 0), then
    /// how many of the peer's credits the sender takes (1 to the peer's grant).
    struct QueuePairNumbers: Equatable {
        static let size = 8
        var queuePairNumber: UInt32
        var creditsTaken: UInt32

        var bytes: [UInt8] {
            withUnsafeBytes(of: (queuePairNumber.bigEndian, creditsTaken.bigEndian)) { Array($0) }
        }

        init(queuePairNumber: UInt32, creditsTaken: UInt32) {
            self.queuePairNumber = queuePairNumber
            self.creditsTaken = creditsTaken
        }

        /// Parses the peer's numbers, checking them against this side's grant.
        init(parsing bytes: [UInt8], granted: UInt32) throws(RDMAError) {
            func word(_ index: Int) -> UInt32 { bytes[index * 4..<index * 4 + 4].reduce(0) { $0 << 8 | UInt32($1) } }
            guard bytes.count == Self.size else {
                throw RDMAError(.connectionFailed, operation: "dma_assoc", errno: .protocolError,
                                message: "the peer sent \(bytes.count) bytes of queue pair numbers, not \(Self.size): is it a DMAIO peer of this version?")
            }
            queuePairNumber = word(0)
            creditsTaken = word(1)
            guard queuePairNumber != 0, queuePairNumber <= 0xFF_FFFF else {
                throw RDMAError(.connectionFailed, operation: "dma_assoc", errno: .protocolError,
                                message: "the peer sent queue pair number \(queuePairNumber), not a 24-bit queue pair number: is it a DMAIO peer?")
            }
            guard creditsTaken >= 1, creditsTaken <= granted else {
                throw RDMAError(.connectionFailed, operation: "dma_assoc", errno: .protocolError,
                                message: "the peer takes \(creditsTaken) credits of the \(granted) this side granted: protocol error")
            }
        }
    }

    /// What a side sends when its connection resumes on a new queue pair, 32 bytes, big-endian:
    ///
    /// ```
    ///  0  magic "DMAR"          4  version (5)     6  0 (16 bits)
    ///  8  data messages received since the association (64 bits)
    /// 16  credits the peer holds on the new queue pair
    /// 20  the new queue pair's number          24  its first PSN      28  0
    /// ```
    ///
    /// The count tells the peer which of its messages arrived: it sends the others again, in
    /// order. The credits are this side's slots that are free (posted on the new queue pair):
    /// the grant, less the messages waiting here or held by the program.
    struct Resume: Equatable {
        static let size = 32
        static let magic: UInt32 = 0x444D_4152  // "DMAR"
        /// The magic's first byte: a socket that turns readable with this byte after the
        /// handshake carries a resume.
        static let firstByte: UInt8 = 0x44
        var messagesReceived: UInt64
        var credits: UInt32
        var queuePairNumber: UInt32
        var packetSequenceNumber: UInt32

        init(messagesReceived: UInt64, credits: UInt32, queuePairNumber: UInt32, packetSequenceNumber: UInt32) {
            self.messagesReceived = messagesReceived
            self.credits = credits
            self.queuePairNumber = queuePairNumber
            self.packetSequenceNumber = packetSequenceNumber
        }

        var bytes: [UInt8] {
            var bytes = [UInt8](repeating: 0, count: Self.size)
            func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
                withUnsafeBytes(of: value.bigEndian) { bytes.replaceSubrange(offset..<offset + $0.count, with: $0) }
            }
            put(Self.magic, at: 0)
            put(SocketHandshake.version, at: 4)
            put(messagesReceived, at: 8)
            put(credits, at: 16)
            put(queuePairNumber, at: 20)
            put(packetSequenceNumber, at: 24)
            return bytes
        }

        /// Parses the peer's resume, checking its credits against what this side may hold.
        init(parsing bytes: [UInt8], creditLimit: Int) throws(RDMAError) {
            func refuse(_ what: String) -> RDMAError {
                RDMAError(.connectionFailed, operation: "dma_assoc", errno: .protocolError,
                          message: "the peer's resume \(what): protocol error")
            }
            guard bytes.count == Self.size else { throw refuse("is \(bytes.count) bytes, not \(Self.size)") }
            func word<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
                bytes[offset..<offset + MemoryLayout<T>.size].reduce(T.zero) { $0 << 8 | T($1) }
            }
            guard word(UInt32.self, at: 0) == Self.magic else { throw refuse("does not start with \"DMAR\"") }
            let version = word(UInt16.self, at: 4)
            guard version == SocketHandshake.version else { throw refuse("is version \(version); this side speaks \(SocketHandshake.version)") }
            guard word(UInt16.self, at: 6) == 0, word(UInt32.self, at: 28) == 0 else { throw refuse("has reserved bytes that are not 0") }
            messagesReceived = word(UInt64.self, at: 8)
            credits = word(UInt32.self, at: 16)
            guard credits <= creditLimit else { throw refuse("hands out \(credits) credits, more than the \(creditLimit) this side took") }
            queuePairNumber = word(UInt32.self, at: 20)
            guard queuePairNumber != 0, queuePairNumber <= 0xFF_FFFF else { throw refuse("names queue pair \(queuePairNumber)") }
            packetSequenceNumber = word(UInt32.self, at: 24)
            guard packetSequenceNumber <= 0xFF_FFFF else { throw refuse("names PSN \(packetSequenceNumber), not a 24-bit number") }
        }
    }

    // MARK: - Socket I/O

    /// Writes all of `bytes` to the socket (no SIGPIPE).
    static func send(_ bytes: [UInt8], over socket: Int32, timeout: Duration) throws(RDMAError) {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { Glibc.send(socket, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
            if written > 0 { offset += written; continue }
            let error = Errno(rawValue: errno)
            if error == .resourceTemporarilyUnavailable || error == .interrupted {
                guard try waitWritable(socket, timeout: timeout) else { throw timedOut(timeout) }
                continue
            }
            throw RDMAError(error == .brokenPipe || error == .connectionReset ? .connectionFailed : .systemCall,
                            operation: "dma_assoc", errno: error == .brokenPipe ? .connectionReset : error,
                            message: "sending the handshake over the TCP socket failed: did the peer close it?")
        }
    }

    /// Reads exactly `count` bytes within `timeout`.
    static func receive(_ count: Int, over socket: Int32, timeout: Duration) throws(RDMAError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var offset = 0
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while offset < count {
            let read = bytes.withUnsafeMutableBytes { recv(socket, $0.baseAddress! + offset, count - offset, Int32(MSG_DONTWAIT)) }
            if read > 0 { offset += read; continue }
            if read == 0 {
                throw RDMAError(.connectionFailed, operation: "dma_assoc", errno: .connectionReset,
                                message: "the peer closed the TCP socket during the handshake (after \(offset) of \(count) bytes)")
            }
            let error = Errno(rawValue: errno)
            guard error == .resourceTemporarilyUnavailable || error == .interrupted else {
                throw RDMAError(.connectionFailed, operation: "dma_assoc", errno: error,
                                message: "reading the handshake from the TCP socket failed")
            }
            let left = deadline - clock.now
            guard left > .zero, try waitReadable(socket, timeout: left) else { throw timedOut(timeout) }
        }
        return bytes
    }

    private static func timedOut(_ timeout: Duration) -> RDMAError {
        RDMAError(.timedOut, operation: "dma_assoc", errno: .timedOut,
                  message: "the peer did not complete the handshake within \(timeout): does it call dma_assoc on its end of the socket?")
    }
}
