import RDMAVerbs

/// What two associated peers tell each other, and how credits ride on messages.
///
/// **Handshake.** The connect request and its accept carry a 16-byte hello in rdma_cm's private
/// data: magic `"DMA1"`, then, as big-endian 32-bit integers, the *credits* the sender grants
/// (how many data messages the peer may have in flight), its *room* (how many credit updates it
/// can absorb) and the size of its receive slots.
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
enum WireProtocol {
    static let magic: UInt32 = 0x444D_4131  // "DMA1"
    static let helloSize = 16
    static let creditMask: UInt32 = 0x00FF_FFFF
    static let creditUpdateFlag: UInt32 = 1 << 31

    struct Hello: Equatable {
        var credits: UInt32
        var room: UInt32
        var slotSize: UInt32

        var bytes: [UInt8] {
            var bytes: [UInt8] = []
            for value in [WireProtocol.magic, credits, room, slotSize] {
                withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
            }
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
            guard credits > 0, credits <= WireProtocol.creditMask, room > 0, room <= WireProtocol.creditMask, slotSize > 0 else {
                throw RDMAError(.connectionFailed, operation: "rdma_cm private data",
                                message: "the peer announced \(credits) credits, room for \(room) updates and \(slotSize)-byte slots: not usable")
            }
        }

        init(credits: UInt32, room: UInt32, slotSize: UInt32) {
            self.credits = credits
            self.room = room
            self.slotSize = slotSize
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

    /// The immediate data of a message that hands back `credits` (at most ``creditMask``), a
    /// credit update or a data message.
    @inline(__always)
    static func immediate(returning credits: UInt32, creditUpdate: Bool) -> UInt32 {
        (credits & creditMask) | (creditUpdate ? creditUpdateFlag : 0)
    }

    /// What a received message's immediate data says — the inverse of
    /// ``immediate(returning:creditUpdate:)``: the credits it hands back, and whether it is a
    /// credit update (no payload, its slot goes straight back) rather than a data message.
    @inline(__always)
    static func decode(immediate: UInt32) -> (credits: Int, isCreditUpdate: Bool) {
        (Int(immediate & creditMask), immediate & creditUpdateFlag != 0)
    }
}
