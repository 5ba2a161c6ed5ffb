/// The messages every case sends: a sequence number, a stream number, the length, a payload
/// derived from them, and a checksum over all of it, so the receiver tells a lost, duplicated,
/// reordered or corrupted message apart.
///
/// ```
///  0  sequence (8 bytes)   8  stream (4)   12  length (4)   16  payload ...   last 8: checksum
/// ```
enum StampedMessage {
    static let minimumSize = 24

    static func fill(_ buffer: UnsafeMutableRawBufferPointer, stream: UInt32, sequence: UInt64) {
        precondition(buffer.count >= minimumSize && buffer.count % 8 == 0)
        buffer.storeBytes(of: sequence.littleEndian, toByteOffset: 0, as: UInt64.self)
        buffer.storeBytes(of: stream.littleEndian, toByteOffset: 8, as: UInt32.self)
        buffer.storeBytes(of: UInt32(buffer.count).littleEndian, toByteOffset: 12, as: UInt32.self)
        var word = sequence &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(stream) << 32
        for offset in stride(from: 16, to: buffer.count - 8, by: 8) {
            word = word &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            buffer.storeBytes(of: word, toByteOffset: offset, as: UInt64.self)
        }
        buffer.storeBytes(of: checksum(UnsafeRawBufferPointer(buffer)), toByteOffset: buffer.count - 8, as: UInt64.self)
    }

    /// The stream and sequence number of an intact message; nil when its checksum, length or
    /// payload is wrong.
    static func read(_ bytes: UnsafeRawBufferPointer) -> (stream: UInt32, sequence: UInt64)? {
        guard bytes.count >= minimumSize, bytes.count % 8 == 0,
              UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 12, as: UInt32.self)) == bytes.count,
              bytes.loadUnaligned(fromByteOffset: bytes.count - 8, as: UInt64.self) == checksum(bytes)
        else { return nil }
        return (UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt32.self)),
                UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self)))
    }

    /// FNV-1a over 64-bit words, all but the last word.
    private static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for offset in stride(from: 0, to: bytes.count - 8, by: 8) {
            hash = (hash ^ bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self)) &* 0x100_0000_01B3
        }
        return hash
    }
}

/// A receiver's account of one stream: every message should carry the next sequence number.
struct SequenceAccount: Codable {
    var received = 0
    var expected: UInt64 = 0
    var lost = 0
    var duplicated = 0
    var corrupted = 0
    var stream: UInt32?

    var clean: Bool { lost == 0 && duplicated == 0 && corrupted == 0 }

    mutating func take(_ bytes: UnsafeRawBufferPointer) {
        received += 1
        guard let (stream, sequence) = StampedMessage.read(bytes), self.stream == nil || self.stream == stream else {
            corrupted += 1
            return
        }
        self.stream = stream
        if sequence == expected {
            expected += 1
        } else if sequence > expected {
            lost += Int(sequence - expected)
            expected = sequence + 1
        } else {
            duplicated += 1
        }
    }

    var summary: String { "\(received) received, \(lost) lost, \(duplicated) duplicated or reordered, \(corrupted) corrupted" }
}
