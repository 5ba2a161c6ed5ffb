/// A buddy allocator over offsets `0 ..< capacity` of a registered area.
///
/// Blocks are powers of two times ``minimumBlock``. Allocation splits the smallest free block
/// that fits; freeing merges a block with its buddy while both are free. Every table is
/// allocated once, up front: allocating and freeing never touch the heap and cost
/// O(log(capacity / minimumBlock)).
///
/// ```
/// capacity 1 KiB, minimumBlock 256 B:   [        1024        ]
/// allocate(300) → 512 B at 0:           [  512 used ][ 512 free ]
/// allocate(100) → 256 B at 512:         [  512 used ][256u][256f]
/// free(0), free(512) → merged again:    [        1024        ]
/// ```
///
/// Not thread-safe: its owner serialises access.
struct BuddyAllocator {
    let minimumBlock: Int
    let capacity: Int
    private let blockShift: Int
    private let maxOrder: Int
    /// Per minimum block: the order of the block that starts there, or -1.
    private var order: [Int8]
    /// Per minimum block: whether the block that starts there is free.
    private var isFree: [Bool]
    private var next: [Int32]
    private var previous: [Int32]
    /// Per order: the first free block, or -1.
    private var heads: [Int32]
    /// Bytes in blocks handed out (block sizes, not requested sizes).
    private(set) var bytesInUse = 0

    /// - Parameters:
    ///   - capacity: bytes to manage; rounded down to a multiple of `minimumBlock`.
    ///   - minimumBlock: the smallest block, a power of two.
    init(capacity: Int, minimumBlock: Int = 256) {
        precondition(minimumBlock > 0 && minimumBlock & (minimumBlock - 1) == 0, "minimumBlock must be a power of two")
        self.minimumBlock = minimumBlock
        blockShift = minimumBlock.trailingZeroBitCount
        let blocks = capacity >> blockShift
        self.capacity = blocks << blockShift
        maxOrder = blocks > 0 ? Int.bitWidth - 1 - blocks.leadingZeroBitCount : 0
        order = Array(repeating: -1, count: blocks)
        isFree = Array(repeating: false, count: blocks)
        next = Array(repeating: -1, count: blocks)
        previous = Array(repeating: -1, count: blocks)
        heads = Array(repeating: -1, count: maxOrder + 1)
        // Seed with the largest aligned blocks that tile the capacity.
        var index = 0
        while index < blocks {
            var o = min(maxOrder, index == 0 ? maxOrder : index.trailingZeroBitCount)
            while index + (1 << o) > blocks { o -= 1 }
            push(index, order: o)
            index += 1 << o
        }
    }

    /// The size of the block that serves a request of `bytes`, or nil if none could.
    func blockSize(for bytes: Int) -> Int? {
        guard bytes > 0, bytes <= capacity else { return nil }
        let blocks = (bytes + minimumBlock - 1) >> blockShift
        let o = blocks <= 1 ? 0 : Int.bitWidth - (blocks - 1).leadingZeroBitCount
        return o <= maxOrder ? minimumBlock << o : nil
    }

    /// Allocates a block of at least `bytes`; returns its offset, or nil when no free block is
    /// large enough.
    mutating func allocate(_ bytes: Int) -> Int? {
        guard let size = blockSize(for: bytes) else { return nil }
        let wanted = (size >> blockShift).trailingZeroBitCount
        var o = wanted
        while o <= maxOrder, heads[o] < 0 { o += 1 }
        guard o <= maxOrder else { return nil }
        let index = Int(heads[o])
        remove(index, order: o)
        while o > wanted {  // split, keeping the lower half
            o -= 1
            push(index + (1 << o), order: o)
        }
        order[index] = Int8(o)
        isFree[index] = false
        bytesInUse += size
        return index << blockShift
    }

    /// The size of the allocated block at `offset`, or nil if no allocated block starts there.
    func allocatedSize(at offset: Int) -> Int? {
        guard offset >= 0, offset < capacity, offset & (minimumBlock - 1) == 0 else { return nil }
        let index = offset >> blockShift
        guard order[index] >= 0, !isFree[index] else { return nil }
        return minimumBlock << Int(order[index])
    }

    /// Frees the block at `offset`; returns false (changing nothing) when no allocated block
    /// starts there, e.g. on a double free.
    @discardableResult
    mutating func free(_ offset: Int) -> Bool {
        guard let size = allocatedSize(at: offset) else { return false }
        bytesInUse -= size
        var index = offset >> blockShift
        var o = Int(order[index])
        order[index] = -1
        while o < maxOrder {
            let buddy = index ^ (1 << o)
            guard buddy + (1 << o) <= order.count, isFree[buddy], order[buddy] == Int8(o) else { break }
            remove(buddy, order: o)
            order[buddy] = -1
            index = min(index, buddy)
            o += 1
        }
        push(index, order: o)
        return true
    }

    private mutating func push(_ index: Int, order o: Int) {
        order[index] = Int8(o)
        isFree[index] = true
        previous[index] = -1
        next[index] = heads[o]
        if heads[o] >= 0 { previous[Int(heads[o])] = Int32(index) }
        heads[o] = Int32(index)
    }

    private mutating func remove(_ index: Int, order o: Int) {
        let p = previous[index], n = next[index]
        if p >= 0 { next[Int(p)] = n } else { heads[o] = n }
        if n >= 0 { previous[Int(n)] = p }
        isFree[index] = false
        next[index] = -1
        previous[index] = -1
    }
}
