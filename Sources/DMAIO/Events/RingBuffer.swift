/// A first-in, first-out queue in one contiguous buffer that grows by doubling when full and
/// never shrinks: once it has grown to the working set, appending and taking allocate nothing.
///
/// Its operations are its own concrete methods (no protocol defaults), so even an unoptimised
/// build takes no detour through generic code that might allocate.
package struct RingBuffer<Element> {
    private var storage: [Element?]
    private var head = 0
    package private(set) var count = 0

    package init(capacity: Int = 16) {
        storage = Array(repeating: nil, count: Swift.max(capacity, 1))
    }

    package var isEmpty: Bool { count == 0 }

    package mutating func append(_ element: Element) {
        if count == storage.count { grow() }
        storage[(head + count) % storage.count] = element
        count += 1
    }

    package mutating func popFirst() -> Element? {
        guard count > 0 else { return nil }
        let element = storage[head]
        storage[head] = nil
        head = (head + 1) % storage.count
        count -= 1
        return element
    }

    /// The element `index` places from the front.
    package subscript(_ index: Int) -> Element {
        precondition(index >= 0 && index < count, "RingBuffer index out of range")
        return storage[(head + index) % storage.count]!
    }

    /// The front element, if any.
    package var front: Element? { count > 0 ? storage[head] : nil }

    /// Makes room for `capacity` elements without further growth.
    package mutating func reserveCapacity(_ capacity: Int) {
        while storage.count < capacity { grow() }
    }

    private mutating func grow() {
        var larger = [Element?](repeating: nil, count: storage.count * 2)
        for index in 0..<count { larger[index] = storage[(head + index) % storage.count] }
        storage = larger
        head = 0
    }
}
