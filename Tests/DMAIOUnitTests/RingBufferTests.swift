import Testing
@testable import DMAIO

@Suite struct RingBufferTests {
    /// Takes every element, front first.
    private func drain(_ ring: inout RingBuffer<Int>) -> [Int] {
        var taken: [Int] = []
        while let element = ring.popFirst() { taken.append(element) }
        return taken
    }

    @Test func keepsOrderAcrossWrapAndGrowth() {
        var ring = RingBuffer<Int>(capacity: 4)
        for value in 0..<3 { ring.append(value) }
        #expect(ring.popFirst() == 0)
        #expect(ring.popFirst() == 1)
        // The head is at 2 of 4: these wrap around, then the ring doubles twice.
        for value in 3..<12 { ring.append(value) }
        #expect(ring.count == 10)
        #expect(ring.front == 2)
        #expect(ring[9] == 11)
        #expect(drain(&ring) == Array(2..<12))
        #expect(ring.isEmpty && ring.popFirst() == nil && ring.front == nil)
    }

    @Test func prependPutsAnElementInFront() {
        var ring = RingBuffer<Int>(capacity: 4)
        ring.prepend(1)
        #expect(ring.front == 1)
        ring.append(2)
        ring.prepend(0)
        #expect(ring.count == 3)
        #expect(drain(&ring) == [0, 1, 2])
        // In front of a head that wrapped, and into a full ring (which grows).
        for value in 10..<14 { ring.append(value) }
        #expect(ring.count == 4)
        ring.prepend(9)
        #expect(ring.count == 5)
        #expect(drain(&ring) == Array(9..<14))
    }

    @Test func removeAllDestroysEveryElement() {
        final class Census { var alive = 0 }
        final class Tracked {
            let census: Census
            init(_ census: Census) {
                self.census = census
                census.alive += 1
            }
            deinit { census.alive -= 1 }
        }
        let census = Census()
        do {
            var ring = RingBuffer<Tracked>(capacity: 2)
            for _ in 0..<5 { ring.append(Tracked(census)) }
            ring.prepend(Tracked(census))
            #expect(census.alive == 6)
            ring.removeAll()
            #expect(census.alive == 0 && ring.isEmpty)
            ring.append(Tracked(census))
            ring.append(Tracked(census))
        }
        #expect(census.alive == 0, "the ring's deinit destroyed what it still held")
    }
}
