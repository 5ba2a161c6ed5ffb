import RDMAVerbs

/// What two associated peers tell each other, and how credits ride on messages.
///
/// **Handshake.** The connect request and its accept carry a 36-byte hello in rdma_cm's private
/// data: magic `"DMA5"`, then, as big-endian 32-bit integers, the *credits* the sender grants
/// (how many data messages the peer may have in flight), its *room* (how many credit updates it
/// can absorb: as many as it takes of the peer's credits) and the size of its receive slots, as
/// a big-endian 64-bit integer the *largest message* it accepts (larger than a slot: by
/// rendezvous, below; at most 1 TiB, the largest area), then what a resume needs
/// (``ResumeRequest``): the server's *resume token* (64 bits) naming the connection and the
/// 16-bit port of its *resume listener*, then 16 bits of 0 (a client sends 0 for both).
///
/// **Rendezvous** (messages larger than the peer's slot; docs/large-messages.md). The sender
/// binds a memory window to the buffer (remote read only, this queue pair only) and sends a
/// *request*: a data message, bit 30 of its immediate data set, whose 24-byte payload is the
/// ``RendezvousRequest``. The receiver reads the buffer into a block of its own area (in pieces of
/// at most 32 KiB, ``ConnectionCore/readPieceLimit``), hands it
/// out in order with the other messages, and tells the sender in bits 24–29 of a later message's
/// immediate data (*dones*, oldest first); the sender then invalidates the window and reports
/// the send. A done always travels with at least one credit: the request's slot is re-posted
/// when its read completes, so the credit-update bound below still holds.
///
/// **Credits.** Every message carries 32 bits of immediate data: bit 31 marks a *credit update*
/// (a message with no payload) and bits 0–23 are credits handed back to the peer, one per
/// receive slot released since the last message. A sender sends data only while it holds a
/// credit, so a data message always finds a posted slot. A credit update is sent only when it
/// hands back at least one credit (and only once half the grant is owed, or when the peer may
/// have run out — otherwise the credits ride on the next data message), so the updates a side
/// can have in flight never exceed the
/// credits the peer granted it; each side posts that many extra slots to absorb them (a client
/// posts as many as it has data slots and says so as its room; the server grants no more than
/// that room). No message ever meets an empty receive queue: receiver-not-ready retries are
/// never needed for correctness. A slow receiver keeps its slots, hands back no credits, and
/// the sender's messages wait in its queue, in order: it is throttled, never failed.
///
/// A side takes no more of the peer's grant than it grants itself, unless its `sendCredits` asks
/// for more (a server's room is at most that; over a socket each side says in the second
/// exchange how many it takes), so by default both directions use the smaller grant, and a
/// peer's announcement never decides how much of the other side's area it gets. The
/// receiver checks every message (``ConnectionCore/creditViolation(credits:dones:isCreditUpdate:)``):
/// a data message when the peer holds no credit, credits handed back beyond those spent, and a
/// credit update that hands back nothing are protocol errors that end the connection.
enum WireProtocol {
    /// Version 5: the resume token and port. Version 4: a server's room says how many of the
    /// client's credits it takes (at most its own grant); version 3 took them all.
    static let magic: UInt32 = 0x444D_4135  // "DMA5"
    static let helloSize = 36
    static let creditMask: UInt32 = 0x00FF_FFFF
    static let creditUpdateFlag: UInt32 = 1 << 31
    static let rendezvousFlag: UInt32 = 1 << 30
    static let doneShift: UInt32 = 24
    /// The most dones one message carries.
    static let maxDones: UInt32 = 63
    /// The largest message a side may announce: the largest area (`dma_alloc`'s limit).
    static let largestMessageLimit = 1 << 40

    struct Hello: Equatable {
        var credits: UInt32
        var room: UInt32
        var slotSize: UInt32
        /// The largest message this side accepts (at least its slot size).
        var largestMessage: UInt64
        /// A server's: what names the connection in a resume, and where to send it (0: none).
        var resumeToken: UInt64 = 0
        var resumePort: UInt16 = 0

        var bytes: [UInt8] {
            var bytes: [UInt8] = []
            for value in [WireProtocol.magic, credits, room, slotSize] {
                withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
            }
            withUnsafeBytes(of: largestMessage.bigEndian) { bytes.append(contentsOf: $0) }
            withUnsafeBytes(of: resumeToken.bigEndian) { bytes.append(contentsOf: $0) }
            withUnsafeBytes(of: resumePort.bigEndian) { bytes.append(contentsOf: $0) }
            bytes += [0, 0]
            return bytes
        }

        /// Parses a hello; private data is padded with zeros by the transport, so longer input is
        /// fine as long as it starts with a valid hello.
        init(parsing data: [UInt8]) throws(RDMAError) {
            guard data.count >= WireProtocol.helloSize else {
                throw RDMAError(.connectionFailed, operation: "rdma_cm private data",
                                message: "the peer sent \(data.count) bytes of connection data, not a DMAIO hello: is it a DMAIO peer?")
            }
            func word(_ index: Int) -> UInt32 {
                data[index * 4..<index * 4 + 4].reduce(0) { $0 << 8 | UInt32($1) }
            }
            guard word(0) == WireProtocol.magic else {
                throw RDMAError(.connectionFailed, operation: "rdma_cm private data",
                                message: "the peer's connection data does not start with the DMAIO magic (wrong protocol or version)")
            }
            credits = word(1)
            room = word(2)
            slotSize = word(3)
            largestMessage = UInt64(word(4)) << 32 | UInt64(word(5))
            resumeToken = UInt64(word(6)) << 32 | UInt64(word(7))
            resumePort = UInt16(word(8) >> 16)
            guard word(8) & 0xFFFF == 0 else {
                throw RDMAError(.connectionFailed, operation: "rdma_cm private data",
                                message: "the peer's hello has reserved bytes that are not 0: is it a DMAIO peer of this version?")
            }
            guard credits > 0, credits <= WireProtocol.creditMask, room > 0, room <= WireProtocol.creditMask, slotSize > 0,
                  largestMessage >= slotSize, largestMessage <= UInt64(WireProtocol.largestMessageLimit) else {
                throw RDMAError(.connectionFailed, operation: "rdma_cm private data",
                                message: "the peer announced \(credits) credits, room for \(room) updates, \(slotSize)-byte slots and messages up to \(largestMessage) bytes: not usable")
            }
        }

        init(credits: UInt32, room: UInt32, slotSize: UInt32, largestMessage: UInt64) {
            self.credits = credits
            self.room = room
            self.slotSize = slotSize
            self.largestMessage = largestMessage
        }
    }

    /// A resume over rdma_cm (``ConnectionCore/Resumption``): the private data of the client's
    /// connect request to the server's resume listener, and of the server's accept. 28 bytes,
    /// big-endian: magic `"DMAU"`, 0 (32 bits), the resume token (64 bits: the server's, from
    /// its hello), the data messages the sender received since the association (64 bits), and
    /// the credits it hands out on the new queue pair (32 bits).
    struct ResumeRequest: Equatable {
        static let magic: UInt32 = 0x444D_4155  // "DMAU"
        static let size = 28
        var token: UInt64
        var messagesReceived: UInt64
        var credits: UInt32

        var bytes: [UInt8] {
            var bytes: [UInt8] = []
            withUnsafeBytes(of: Self.magic.bigEndian) { bytes.append(contentsOf: $0) }
            bytes += [0, 0, 0, 0]
            withUnsafeBytes(of: token.bigEndian) { bytes.append(contentsOf: $0) }
            withUnsafeBytes(of: messagesReceived.bigEndian) { bytes.append(contentsOf: $0) }
            withUnsafeBytes(of: credits.bigEndian) { bytes.append(contentsOf: $0) }
            return bytes
        }

        init(token: UInt64, messagesReceived: UInt64, credits: UInt32) {
            self.token = token
            self.messagesReceived = messagesReceived
            self.credits = credits
        }

        /// A resume, or nil when `data` is not one (private data is padded with zeros).
        init?(parsing data: [UInt8]) {
            guard data.count >= Self.size else { return nil }
            func word(_ index: Int) -> UInt32 { data[index * 4..<index * 4 + 4].reduce(0) { $0 << 8 | UInt32($1) } }
            guard word(0) == Self.magic, word(1) == 0 else { return nil }
            token = UInt64(word(2)) << 32 | UInt64(word(3))
            messagesReceived = UInt64(word(4)) << 32 | UInt64(word(5))
            credits = word(6)
        }
    }

    /// Why a server refused a connection request: the private data of its `rdma_reject` when
    /// its own association failed — magic `"DMAR"`, then the errno of the failure as a
    /// big-endian 32-bit integer — so that the client can say why instead of guessing.
    struct Refusal: Equatable {
        static let magic: UInt32 = 0x444D_4152  // "DMAR"
        var errno: Int32

        var bytes: [UInt8] {
            var bytes: [UInt8] = []
            for value in [Self.magic, UInt32(bitPattern: errno)] {
                withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
            }
            return bytes
        }

        init(errno: Int32) { self.errno = errno }

        /// A refusal, or nil when `data` is not one (a peer of another kind rejected).
        init?(parsing data: [UInt8]) {
            guard data.count >= 8 else { return nil }
            func word(_ index: Int) -> UInt32 { data[index * 4..<index * 4 + 4].reduce(0) { $0 << 8 | UInt32($1) } }
            guard word(0) == Self.magic else { return nil }
            errno = Int32(bitPattern: word(1))
        }
    }

    /// The immediate data of a message that hands back `credits` (at most ``creditMask``) and
    /// `dones` (at most ``maxDones``): a credit update, a data message, or a rendezvous request.
    @inline(__always)
    static func immediate(returning credits: UInt32, dones: UInt32 = 0, creditUpdate: Bool, rendezvous: Bool = false) -> UInt32 {
        (credits & creditMask) | dones << doneShift | (creditUpdate ? creditUpdateFlag : 0) | (rendezvous ? rendezvousFlag : 0)
    }

    /// What a received message's immediate data says — the inverse of
    /// ``immediate(returning:dones:creditUpdate:rendezvous:)``: the credits it hands back, the
    /// peer's rendezvous reads it reports done, whether it is a credit update (no payload, its
    /// slot goes straight back) and whether it is a rendezvous request.
    @inline(__always)
    static func decode(immediate: UInt32) -> (credits: Int, isCreditUpdate: Bool) {
        (Int(immediate & creditMask), immediate & creditUpdateFlag != 0)
    }

    @inline(__always)
    static func dones(in immediate: UInt32) -> Int { Int(immediate >> doneShift & maxDones) }

    @inline(__always)
    static func isRendezvous(_ immediate: UInt32) -> Bool { immediate & (creditUpdateFlag | rendezvousFlag) == rendezvousFlag }

    /// The payload of a rendezvous request: where the sender's buffer is and the key that reads
    /// it. 24 bytes, big-endian: length (u64), address (u64), key (u32), 0 (u32).
    struct RendezvousRequest: Equatable {
        static let size = 24
        var length: UInt64
        var address: UInt64
        var key: UInt32

        func write(to bytes: UnsafeMutableRawPointer) {
            bytes.storeBytes(of: length.bigEndian, toByteOffset: 0, as: UInt64.self)
            bytes.storeBytes(of: address.bigEndian, toByteOffset: 8, as: UInt64.self)
            bytes.storeBytes(of: key.bigEndian, toByteOffset: 16, as: UInt32.self)
            bytes.storeBytes(of: UInt32(0), toByteOffset: 20, as: UInt32.self)
        }

        init(length: UInt64, address: UInt64, key: UInt32) {
            self.length = length
            self.address = address
            self.key = key
        }

        /// Nil when `count` bytes cannot be a request (then the peer broke the protocol).
        init?(reading bytes: UnsafeRawPointer, count: Int) {
            guard count == Self.size else { return nil }
            length = UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
            address = UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
            key = UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: 16, as: UInt32.self))
        }
    }
}
