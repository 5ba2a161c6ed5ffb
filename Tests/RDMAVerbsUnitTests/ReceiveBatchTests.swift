import CRDMA
import Testing
@testable import RDMAVerbs

@Suite struct ReceiveBatchTests {
    @Test func gathersRequestsInOrderIntoOneChain() {
        var batch = ReceiveBatch(capacity: 4)
        let (empty, full, capacity) = (batch.isEmpty, batch.isFull, batch.capacity)
        #expect(empty && !full && capacity == 4)
        for index in 0..<4 {
            batch.append(ScatterGatherElement(address: 0x1000 + UInt64(index) * 64, length: 64, localKey: 7), requestID: 100 + UInt64(index))
        }
        let (count, isFull) = (batch.count, batch.isFull)
        #expect(count == 4 && isFull)
        var request: UnsafeMutablePointer<ibv_recv_wr>? = batch.requests
        var seen: [UInt64] = []
        while let current = request {
            let segment = current.pointee.sg_list!.pointee
            #expect(current.pointee.num_sge == 1)
            #expect(segment.addr == 0x1000 + UInt64(seen.count) * 64 && segment.length == 64 && segment.lkey == 7)
            seen.append(current.pointee.wr_id)
            request = current.pointee.next
        }
        #expect(seen == [100, 101, 102, 103])
    }

    @Test func removeAllEmptiesTheBatchForReuse() {
        var batch = ReceiveBatch(capacity: 2)
        batch.append(ScatterGatherElement(address: 0x2000, length: 8, localKey: 1), requestID: 1)
        batch.removeAll()
        let empty = batch.isEmpty
        #expect(empty)
        batch.append(ScatterGatherElement(address: 0x3000, length: 16, localKey: 2), requestID: 2)
        let (count, requestID, address) = (batch.count, batch.requests.pointee.wr_id, batch.segments.pointee.addr)
        #expect(count == 1 && requestID == 2 && address == 0x3000)
    }
}
