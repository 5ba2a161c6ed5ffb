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
/// It sits on the data path (every `sio_reserve`, every completed send), so it owns its two
/// tables outright (a non-copyable value over buffers it allocated: no copy-on-write check, a
/// runtime call, per operation), and each order keeps one freed block aside, unmerged: a
/// program that reserves and sends buffers of one size (an inline send frees its block at
/// once) takes the same block back and forth without splitting and merging the tree every
/// time. A spare block counts as free (not in ``bytesInUse``, not freeable twice); when a
/// request finds no free block, the spares are merged back and the request is tried again, so
/// they never make an allocation fail.
///
/// Not thread-safe: its owner serialises access.
struct BuddyAllocator: ~Copyable {
    let minimumBlock: Int
    let capacity: Int
    private let blockShift: Int
    private let maxOrder: Int
    /// Per minimum block: the free-list links and the state of the block that starts there; per
    /// order: the free list's head and the spare block. Allocated once, freed by deinit.
    private let tables: Tables
    /// Bytes in blocks handed out (block sizes, not requested sizes).
    private(set) var bytesInUse = 0

    private struct Node {
        var next: Int32 = -1
        var previous: Int32 = -1
        /// The order of the block that starts here, or -1.
        var order: Int8 = -1
        /// Whether the block that starts here is free.
        var isFree = false
        /// Whether the block that starts here is its order's spare (not free in the tree).
        var isSpare = false
    }

    private struct Order {
        /// The first free block, or -1.
        var head: Int32 = -1
        /// A freed block kept unmerged for the next request of this order, or -1.
        var spare: Int32 = -1
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
        let nodes = UnsafeMutableBufferPointer<Node>.allocate(capacity: blocks)
        nodes.initialize(repeating: Node())
        let orders = UnsafeMutableBufferPointer<Order>.allocate(capacity: maxOrder + 1)
        orders.initialize(repeating: Order())
        tables = Tables(nodes: nodes, orders: orders)
        // Seed with the largest aligned blocks that tile the capacity.
        var index = 0
        while index < blocks {
            var o = min(maxOrder, index == 0 ? maxOrder : index.trailingZeroBitCount)
            while index + (1 << o) > blocks { o -= 1 }
            tables.push(index, order: o)
            index += 1 << o
        }
    }

    deinit {
        tables.nodes.deallocate()
        tables.orders.deallocate()
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
    /// large enough. Inlined into the area's data path (see `DMAArea.allocate(_:for:)`).
    @inline(__always)
    mutating func allocate(_ bytes: Int) -> Int? {
        guard let size = blockSize(for: bytes) else { return nil }
        let wanted = (size &>> blockShift).trailingZeroBitCount
        guard let index = take(order: wanted) else { return nil }
        bytesInUse += size
        return index &<< blockShift
    }

    @inline(__always)
    private func take(order wanted: Int) -> Int? {
        if let index = tables.takeSpare(order: wanted) ?? tables.split(order: wanted, maxOrder: maxOrder) { return index }
        // Nothing free that large: merge the spares back and look again.
        guard tables.mergeSpares(maxOrder: maxOrder) else { return nil }
        return tables.split(order: wanted, maxOrder: maxOrder)
    }

    /// The size of the allocated block at `offset`, or nil if no allocated block starts there.
    func allocatedSize(at offset: Int) -> Int? {
        guard offset >= 0, offset < capacity, offset & (minimumBlock - 1) == 0 else { return nil }
        let node = tables.nodes[offset &>> blockShift]
        guard node.order >= 0, !node.isFree, !node.isSpare else { return nil }
        return minimumBlock &<< Int(node.order)
    }

    /// Frees the block at `offset`; returns false (changing nothing) when no allocated block
    /// starts there, e.g. on a double free.
    @discardableResult
    @inline(__always)
    mutating func free(_ offset: Int) -> Bool {
        guard let size = allocatedSize(at: offset) else { return false }
        bytesInUse -= size
        let index = offset &>> blockShift
        if !tables.keepAsSpare(index) { tables.merge(index, maxOrder: maxOrder) }
        return true
    }

    /// The two tables; the allocator owns their memory.
    private struct Tables {
        let nodes: UnsafeMutableBufferPointer<Node>
        let orders: UnsafeMutableBufferPointer<Order>

        func push(_ index: Int, order o: Int) {
            let head = orders[o].head
            nodes[index] = Node(next: head, previous: -1, order: Int8(o), isFree: true)
            if head >= 0 { nodes[Int(head)].previous = Int32(index) }
            orders[o].head = Int32(index)
        }

        func remove(_ index: Int, order o: Int) {
            let p = nodes[index].previous, n = nodes[index].next
            if p >= 0 { nodes[Int(p)].next = n } else { orders[o].head = n }
            if n >= 0 { nodes[Int(n)].previous = p }
            nodes[index].isFree = false
            nodes[index].next = -1
            nodes[index].previous = -1
        }

        /// Takes the smallest free block of at least order `wanted` and splits it down to that
        /// order, keeping the lower half; returns its index.
        func split(order wanted: Int, maxOrder: Int) -> Int? {
            var o = wanted
            while o <= maxOrder, orders[o].head < 0 { o += 1 }
            guard o <= maxOrder else { return nil }
            let index = Int(orders[o].head)
            remove(index, order: o)
            while o > wanted {
                o -= 1
                push(index + (1 &<< o), order: o)
            }
            nodes[index].order = Int8(o)
            nodes[index].isFree = false
            return index
        }

        /// Returns the allocated block at `index` to the tree, merging it with its buddy while
        /// both are free.
        func merge(_ index: Int, maxOrder: Int) {
            var index = index
            var o = Int(nodes[index].order)
            nodes[index].order = -1
            while o < maxOrder {
                let buddy = index ^ (1 &<< o)
                guard buddy + (1 &<< o) <= nodes.count, nodes[buddy].isFree, nodes[buddy].order == Int8(o) else { break }
                remove(buddy, order: o)
                nodes[buddy].order = -1
                index = min(index, buddy)
                o += 1
            }
            push(index, order: o)
        }

        func takeSpare(order o: Int) -> Int? {
            let spare = orders[o].spare
            guard spare >= 0 else { return nil }
            orders[o].spare = -1
            nodes[Int(spare)].isSpare = false
            return Int(spare)
        }

        /// Keeps the allocated block at `index` as its order's spare, if that place is empty.
        func keepAsSpare(_ index: Int) -> Bool {
            let o = Int(nodes[index].order)
            guard orders[o].spare < 0 else { return false }
            orders[o].spare = Int32(index)
            nodes[index].isSpare = true
            return true
        }

        /// Merges every spare back into the tree; false when there was none.
        func mergeSpares(maxOrder: Int) -> Bool {
            var merged = false
            for o in 0...maxOrder {
                guard let index = takeSpare(order: o) else { continue }
                merge(index, maxOrder: maxOrder)
                merged = true
            }
            return merged
        }
    }
}
