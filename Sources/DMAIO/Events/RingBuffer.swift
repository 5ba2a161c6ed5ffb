/// A first-in, first-out queue in one contiguous buffer that grows by doubling when full and
/// never shrinks: once it has grown to the working set, appending and taking allocate nothing.
///
/// ```
///   storage: [ . . . E F G . . . ]      capacity 8 (a power of two)
///                    ^head  count 3      position of element i: (head + i) & (capacity - 1)
/// ```
///
/// It sits on the data path, a few times per message, so it owns its buffer outright: a
/// non-copyable value whose storage no one else can reference, an operation is a few loads and
/// stores with no uniqueness check (an array's copy-on-write check is a runtime call) and no
/// optional tag per element. Positions wrap with a mask rather than a division.
///
/// Its operations are its own concrete methods (no protocol defaults), so even an unoptimised
/// build takes no detour through generic code that might allocate.
package struct RingBuffer<Element>: ~Copyable {
    private var storage: UnsafeMutablePointer<Element>
    private var capacity: Int
    private var head = 0
    package private(set) var count = 0

    package init(capacity: Int = 16) {
        self.capacity = Self.powerOfTwo(atLeast: capacity)
        storage = .allocate(capacity: self.capacity)
    }

    deinit {
        let first = Swift.min(count, capacity - head)
        (storage + head).deinitialize(count: first)
        storage.deinitialize(count: count - first)
        storage.deallocate()
    }

    package var isEmpty: Bool {
        @inline(__always) get { count == 0 }
    }

    @inline(__always)
    package mutating func append(_ element: consuming Element) {
        if count == capacity { grow() }
        (storage + ((head &+ count) & (capacity &- 1))).initialize(to: element)
        count &+= 1
    }

    /// Puts `element` in front of the others: the next ``popFirst()`` returns it.
    package mutating func prepend(_ element: consuming Element) {
        if count == capacity { grow() }
        head = (head &- 1) & (capacity &- 1)
        (storage + head).initialize(to: element)
        count &+= 1
    }

    @inline(__always)
    package mutating func popFirst() -> Element? {
        guard count > 0 else { return nil }
        let index = head
        head = (index &+ 1) & (capacity &- 1)
        count &-= 1
        return (storage + index).move()
    }

    /// The element `index` places from the front.
    package subscript(_ index: Int) -> Element {
        @inline(__always) get {
            precondition(index >= 0 && index < count, "RingBuffer index out of range")
            return storage[(head &+ index) & (capacity &- 1)]
        }
        @inline(__always) set {
            precondition(index >= 0 && index < count, "RingBuffer index out of range")
            storage[(head &+ index) & (capacity &- 1)] = newValue
        }
    }

    /// The front element, if any.
    package var front: Element? {
        @inline(__always) get { count > 0 ? storage[head] : nil }
    }

    /// Takes every element out (they are destroyed).
    package mutating func removeAll() {
        while count > 0 {
            (storage + head).deinitialize(count: 1)
            head = (head &+ 1) & (capacity &- 1)
            count &-= 1
        }
        head = 0
    }

    /// Makes room for `capacity` elements without further growth.
    package mutating func reserveCapacity(_ capacity: Int) {
        while self.capacity < capacity { grow() }
    }

    private mutating func grow() {
        let larger = UnsafeMutablePointer<Element>.allocate(capacity: capacity * 2)
        // The elements move, in order, to the front of the new buffer.
        let first = Swift.min(count, capacity - head)
        larger.moveInitialize(from: storage + head, count: first)
        (larger + first).moveInitialize(from: storage, count: count - first)
        storage.deallocate()
        storage = larger
        capacity *= 2
        head = 0
    }

    private static func powerOfTwo(atLeast capacity: Int) -> Int {
        capacity <= 1 ? 1 : 1 << (Int.bitWidth - (capacity - 1).leadingZeroBitCount)
    }
}
