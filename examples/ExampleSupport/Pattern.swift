#if canImport(Glibc)
import Glibc
#endif

/// The bytes of message n, shared by the example tools so that each side can check what the
/// other sent: a window into a fixed pseudo-random table, shifted by n, so that filling is one
/// copy and checking one comparison.
public struct Pattern: Sendable {
    private let table: [UInt8]

    public init(size: Int) {
        var state: UInt32 = 2_463_534_242
        table = (0..<(size + 256)).map { _ in
            state ^= state << 13; state ^= state >> 17; state ^= state << 5  // xorshift32
            return UInt8(truncatingIfNeeded: state)
        }
    }

    public func fill(_ buffer: UnsafeMutableRawBufferPointer, sequence: UInt64) {
        table.withUnsafeBytes { table in
            buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: table[Int(sequence % 256)...].prefix(buffer.count)))
        }
    }

    public func matches(_ bytes: UnsafeRawBufferPointer, sequence: UInt64) -> Bool {
        table.withUnsafeBytes { table in
            memcmp(bytes.baseAddress!, table.baseAddress! + Int(sequence % 256), bytes.count) == 0
        }
    }
}

/// Writes a line to standard error, unbuffered.
public func printError(_ line: String) {
    var text = line + "\n"
    text.withUTF8 { bytes in _ = write(2, bytes.baseAddress, bytes.count) }
}

/// The smallest power of two that holds `size` bytes, at least 64: a receive slot size.
public func slotSize(for size: Int) -> Int {
    max(64, 1 << (Int.bitWidth - (size - 1).leadingZeroBitCount))
}
