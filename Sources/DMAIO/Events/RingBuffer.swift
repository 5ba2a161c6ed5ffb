/// A first-in, first-out queue in one contiguous buffer that grows by doubling when full and
/// never shrinks: once it has grown to the working set, appending and taking allocate nothing.
///
/// Its capacity is a power of two, so positions wrap with a mask rather than a division, and
/// each operation opens the buffer once (one uniqueness check): it sits on the data path, a few
/// times per message.
///
/// Its operations are its own concrete methods (no protocol defaults), so even an unoptimised
/// build takes no detour through generic code that might allocate.
package struct RingBuffer<Element> {
    private var storage: ContiguousArray<Element?>
    private var head = 0
    package private(set) var count = 0

    package init(capacity: Int = 16) {
        storage = ContiguousArray(repeating: nil, count: Self.powerOfTwo(atLeast: capacity))
    }

    package var isEmpty: Bool { count == 0 }

    package mutating func append(_ element: Element) {
        if count == storage.count { grow() }
        let index = (head &+ count) & (storage.count &- 1)
        storage.withUnsafeMutableBufferPointer { $0[index] = element }
        count &+= 1
    }

    package mutating func popFirst() -> Element? {
        guard count > 0 else { return nil }
        let index = head
        head = (index &+ 1) & (storage.count &- 1)
        count &-= 1
        return storage.withUnsafeMutableBufferPointer { $0[index].take() }
    }

    /// The element `index` places from the front.
    package subscript(_ index: Int) -> Element {
        precondition(index >= 0 && index < count, "RingBuffer index out of range")
        return storage[(head &+ index) & (storage.count &- 1)]!
    }

    /// The front element, if any.
    package var front: Element? { count > 0 ? storage[head] : nil }

    /// Makes room for `capacity` elements without further growth.
    package mutating func reserveCapacity(_ capacity: Int) {
        while storage.count < capacity { grow() }
    }

    private mutating func grow() {
        var larger = ContiguousArray<Element?>(repeating: nil, count: storage.count * 2)
        for index in 0..<count { larger[index] = storage[(head + index) & (storage.count - 1)] }
        storage = larger
        head = 0
    }

    private static func powerOfTwo(atLeast capacity: Int) -> Int {
        capacity <= 1 ? 1 : 1 << (Int.bitWidth - (capacity - 1).leadingZeroBitCount)
    }
}
