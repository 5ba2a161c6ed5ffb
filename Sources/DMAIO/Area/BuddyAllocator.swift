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
/// It sits on the data path (every `sio_reserve`, every completed send), so each operation
/// touches its two tables through one pair of buffer pointers: one uniqueness check per table
/// and call, not one per element.
///
/// Not thread-safe: its owner serialises access.
struct BuddyAllocator {
    let minimumBlock: Int
    let capacity: Int
    private let blockShift: Int
    private let maxOrder: Int
    /// Per minimum block: the free-list links and the state of the block that starts there.
    private var nodes: [Node]
    /// Per order: the first free block, or -1.
    private var heads: [Int32]
    /// Bytes in blocks handed out (block sizes, not requested sizes).
    private(set) var bytesInUse = 0

    private struct Node {
        var next: Int32 = -1
        var previous: Int32 = -1
        /// The order of the block that starts here, or -1.
        var order: Int8 = -1
        /// Whether the block that starts here is free.
        var isFree = false
    }

    /// - Parameters:
    ///   - capacity: bytes to manage; rounded down to a multiple of `minimumBlock`.
    ///   - minimumBlock: the smallest block, a power of two.
    init(capacity: Int, minimumBlock: Int = 256) {
        precondition(minimumBlock > 0 && minimumBlock & (minimumBlock - 1) == 0, "minimumBlock must be a power of two")
        self.minimumBlock = minimumBlock
        blockShift = minimumBlock.trailingZeroBitCount
        let blocks = capacity >> blockShift
        self.capacity = blocks << blockShift
        let maxOrder = blocks > 0 ? Int.bitWidth - 1 - blocks.leadingZeroBitCount : 0
        self.maxOrder = maxOrder
        nodes = Array(repeating: Node(), count: blocks)
        heads = Array(repeating: -1, count: maxOrder + 1)
        // Seed with the largest aligned blocks that tile the capacity.
        withLists { lists in
            var index = 0
            while index < blocks {
                var o = min(maxOrder, index == 0 ? maxOrder : index.trailingZeroBitCount)
                while index + (1 << o) > blocks { o -= 1 }
                lists.push(index, order: o)
                index += 1 << o
            }
        }
    }

    /// The size of the block that serves a request of `bytes`, or nil if none could.
    @inline(__always)
    func blockSize(for bytes: Int) -> Int? {
        guard bytes > 0, bytes <= capacity else { return nil }
        let blocks = (bytes + minimumBlock - 1) &>> blockShift
        let o = blocks <= 1 ? 0 : Int.bitWidth - (blocks - 1).leadingZeroBitCount
        return o <= maxOrder ? minimumBlock &<< o : nil
    }

    /// Allocates a block of at least `bytes`; returns its offset, or nil when no free block is
    /// large enough.
    mutating func allocate(_ bytes: Int) -> Int? {
        guard let size = blockSize(for: bytes) else { return nil }
        let wanted = (size &>> blockShift).trailingZeroBitCount
        let maxOrder = self.maxOrder
        let found = withLists { lists -> Int? in
            var o = wanted
            while o <= maxOrder, lists.heads[o] < 0 { o += 1 }
            guard o <= maxOrder else { return nil }
            let index = Int(lists.heads[o])
            lists.remove(index, order: o)
            while o > wanted {  // split, keeping the lower half
                o -= 1
                lists.push(index + (1 &<< o), order: o)
            }
            lists.nodes[index].order = Int8(o)
            lists.nodes[index].isFree = false
            return index
        }
        guard let index = found else { return nil }
        bytesInUse += size
        return index &<< blockShift
    }

    /// The size of the allocated block at `offset`, or nil if no allocated block starts there.
    func allocatedSize(at offset: Int) -> Int? {
        guard offset >= 0, offset < capacity, offset & (minimumBlock - 1) == 0 else { return nil }
        let node = nodes[offset &>> blockShift]
        guard node.order >= 0, !node.isFree else { return nil }
        return minimumBlock &<< Int(node.order)
    }

    /// Frees the block at `offset`; returns false (changing nothing) when no allocated block
    /// starts there, e.g. on a double free.
    @discardableResult
    mutating func free(_ offset: Int) -> Bool {
        guard let size = allocatedSize(at: offset) else { return false }
        bytesInUse -= size
        let maxOrder = self.maxOrder, first = offset &>> blockShift
        withLists { lists in
            var index = first
            var o = Int(lists.nodes[index].order)
            lists.nodes[index].order = -1
            while o < maxOrder {
                let buddy = index ^ (1 &<< o)
                guard buddy + (1 &<< o) <= lists.nodes.count, lists.nodes[buddy].isFree, lists.nodes[buddy].order == Int8(o) else { break }
                lists.remove(buddy, order: o)
                lists.nodes[buddy].order = -1
                index = min(index, buddy)
                o += 1
            }
            lists.push(index, order: o)
        }
        return true
    }

    /// The two tables, open for one operation.
    private struct Lists {
        let nodes: UnsafeMutableBufferPointer<Node>
        let heads: UnsafeMutableBufferPointer<Int32>

        func push(_ index: Int, order o: Int) {
            let head = heads[o]
            nodes[index] = Node(next: head, previous: -1, order: Int8(o), isFree: true)
            if head >= 0 { nodes[Int(head)].previous = Int32(index) }
            heads[o] = Int32(index)
        }

        func remove(_ index: Int, order o: Int) {
            let p = nodes[index].previous, n = nodes[index].next
            if p >= 0 { nodes[Int(p)].next = n } else { heads[o] = n }
            if n >= 0 { nodes[Int(n)].previous = p }
            nodes[index].isFree = false
            nodes[index].next = -1
            nodes[index].previous = -1
        }
    }

    @inline(__always)
    private mutating func withLists<R>(_ body: (Lists) -> R) -> R {
        nodes.withUnsafeMutableBufferPointer { nodes in
            heads.withUnsafeMutableBufferPointer { heads in body(Lists(nodes: nodes, heads: heads)) }
        }
    }
}
