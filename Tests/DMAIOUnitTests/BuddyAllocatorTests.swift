import Testing
@testable import DMAIO

@Suite struct BuddyAllocatorTests {
    @Test func splitsAndMergesBack() throws {
        var allocator = BuddyAllocator(capacity: 1024, minimumBlock: 256)
        let a = try #require(allocate(&allocator, 300))
        #expect(a == 0)
        #expect(allocator.allocatedSize(at: a) == 512)
        let b = try #require(allocate(&allocator, 100))
        #expect(b == 512)
        let c = try #require(allocate(&allocator, 1))
        #expect(c == 768)
        #expect(allocate(&allocator, 1) == nil)
        #expect(allocator.bytesInUse == 1024)
        #expect(free(&allocator, b))
        #expect(free(&allocator, c))
        #expect(free(&allocator, a))
        #expect(allocator.bytesInUse == 0)
        #expect(allocate(&allocator, 1024) == 0, "the blocks merged back into one")
    }

    @Test func refusesDoubleFreeAndForeignOffsets() throws {
        var allocator = BuddyAllocator(capacity: 4096, minimumBlock: 256)
        let a = try #require(allocate(&allocator, 256))
        #expect(free(&allocator, a))
        #expect(!free(&allocator, a), "a double free changes nothing")
        #expect(!free(&allocator, 100), "not a block boundary")
        #expect(!free(&allocator, 1 << 20), "outside the area")
        #expect(allocator.bytesInUse == 0)
    }

    @Test func zeroAndOversizedRequestsFail() {
        var allocator = BuddyAllocator(capacity: 4096, minimumBlock: 256)
        #expect(allocate(&allocator, 0) == nil)
        #expect(allocate(&allocator, 4097) == nil)
        #expect(allocate(&allocator, 4096) == 0)
    }

    @Test func capacityThatIsNotAPowerOfTwoIsFullyUsable() throws {
        var allocator = BuddyAllocator(capacity: 3 * 4096, minimumBlock: 4096)
        var offsets = Set<Int>()
        while let offset = allocator.allocate(4096) { offsets.insert(offset) }
        #expect(offsets == [0, 4096, 8192])
    }

    /// Random allocate/free sequences never hand out overlapping blocks and always merge back.
    @Test func randomWorkloadKeepsBlocksDisjoint() throws {
        var allocator = BuddyAllocator(capacity: 1 << 20, minimumBlock: 256)
        var live: [(offset: Int, size: Int)] = []
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<20_000 {
            if live.isEmpty || (Int.random(in: 0..<3, using: &generator) > 0 && live.count < 500) {
                let request = Int.random(in: 1...65536, using: &generator)
                guard let offset = allocator.allocate(request) else { continue }
                let size = try #require(allocator.allocatedSize(at: offset) as Int?)
                #expect(size >= request && offset % size == 0)
                for block in live {
                    #expect(offset + size <= block.offset || block.offset + block.size <= offset)
                }
                live.append((offset, size))
            } else {
                let index = Int.random(in: 0..<live.count, using: &generator)
                #expect(free(&allocator, live.remove(at: index).offset))
            }
        }
        for block in live { #expect(free(&allocator, block.offset)) }
        #expect(allocator.bytesInUse == 0)
        #expect(allocate(&allocator, 1 << 20) == 0)
    }
}

private func allocate(_ allocator: inout BuddyAllocator, _ bytes: Int) -> Int? { allocator.allocate(bytes) }
private func free(_ allocator: inout BuddyAllocator, _ offset: Int) -> Bool { allocator.free(offset) }
