import CDMAIO
import CRDMA
import DMAIO
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

// dma_alloc, dma_free, sio_reserve, sio_release, sio_release_buffer — see dmaio.h. Each takes
// the area's lock only.

/// `int dma_alloc(dma_mem_t *handle, size_t size, int flags)`: an area on DMAIO_DEVICE (or the
/// first device). The corresponding verbs calls are `ibv_alloc_pd` and `ibv_reg_mr`.
@_cdecl("dma_alloc")
public func dmaAlloc(_ handle: UnsafeMutablePointer<OpaquePointer?>?, _ size: UInt, _ flags: Int32) -> Int32 {
    cCall { () throws(Failure) -> Int32 in
        guard let handle else { throw .null("dma_alloc", "handle") }
        guard flags & ~Int32(DMA_HUGEPAGES) == 0 else { throw .flags("dma_alloc", flags) }
        guard size > 0, size <= 1 << 40 else {
            throw Failure(EINVAL, "dma_alloc: \(size) bytes: an area needs 1 byte to 1 TiB")
        }
        let area = try swiftCall { () throws(RDMAError) in
            try DMAArea(size: max(Int(size), 4096), hugePages: flags & Int32(DMA_HUGEPAGES) != 0, device: environmentDevice)
        }
        handle.pointee = SlotHandle.pointer(try Registry.shared.openArea(area).handle)
        return 0
    }
}

/// `int dma_free(dma_mem_t handle)`. The corresponding verbs calls are `ibv_dereg_mr` and
/// `ibv_dealloc_pd` (once nothing uses the area any more).
@_cdecl("dma_free")
public func dmaFree(_ handle: OpaquePointer?) -> Int32 {
    cCall { () throws(Failure) -> Int32 in
        let registry = Registry.shared
        try registry.closeArea(try registry.area(handle, "dma_free"))
        return 0
    }
}

/// `int sio_reserve(dma_mem_t handle, void **buffer, size_t size)`: a block of the area, from
/// its allocator (no system call, no heap allocation once warm).
@_cdecl("sio_reserve")
public func sioReserve(_ handle: OpaquePointer?, _ buffer: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ size: UInt) -> Int32 {
    cCall { () throws(Failure) -> Int32 in
        let area = try Registry.shared.area(handle, "sio_reserve")
        guard let buffer else { throw .null("sio_reserve", "buffer") }
        let address = try area.withOpen("sio_reserve") { entry throws(Failure) -> UInt in
            guard size > 0 else { throw Failure(EINVAL, "sio_reserve: cannot reserve 0 bytes") }
            guard size <= UInt(entry.area.size) else {
                throw Failure(EINVAL, "sio_reserve: \(size) bytes are more than the whole area of \(entry.area.size) bytes")
            }
            let offset = try swiftCall { () throws(RDMAError) in try entry.area.allocate(Int(size), for: "sio_reserve") }
            entry.reserved[offset] = Int(size)
            return UInt(bitPattern: entry.area.address(offset))
        }
        buffer.pointee = UnsafeMutableRawPointer(bitPattern: address)
        return 0
    }
}

/// `int sio_release(dma_mem_t handle, size_t size)`: the oldest `size` received bytes, FIFO.
/// The corresponding verbs call is `ibv_post_recv` (for each slot released whole).
@_cdecl("sio_release")
public func sioRelease(_ handle: OpaquePointer?, _ size: UInt) -> Int32 {
    cCall { () throws(Failure) -> Int32 in
        try Registry.shared.area(handle, "sio_release").withOpen("sio_release") { entry throws(Failure) in
            guard size > 0, size <= UInt(entry.heldBytes) else {
                throw Failure(EINVAL, size == 0
                    ? "sio_release: cannot release 0 bytes"
                    : "sio_release: cannot release \(size) bytes: only \(entry.heldBytes) received bytes are held (nothing was released)")
            }
            var left = Int(size)
            while left > 0 {
                entry.trimHeldOrder()
                guard let front = entry.heldOrder.front, var held = entry.held[front.address] else { break }
                let take = min(left, held.message.bytes.count - held.consumed)
                left -= take
                held.consumed += take
                entry.heldBytes -= take
                if held.consumed == held.message.bytes.count {
                    held.message.release()
                    entry.held[front.address] = nil
                    _ = entry.heldOrder.popFirst()
                } else {
                    entry.held[front.address] = held
                }
            }
        }
        return 0
    }
}

/// `int sio_release_buffer(dma_mem_t handle, void *buffer)`: one received buffer, out of order,
/// or a reserved buffer that will not be sent.
@_cdecl("sio_release_buffer")
public func sioReleaseBuffer(_ handle: OpaquePointer?, _ buffer: UnsafeMutableRawPointer?) -> Int32 {
    cCall { () throws(Failure) -> Int32 in
        let area = try Registry.shared.area(handle, "sio_release_buffer")
        guard let buffer else { throw .null("sio_release_buffer", "buffer") }
        let address = UInt(bitPattern: buffer)
        try area.withOpen("sio_release_buffer") { entry throws(Failure) in
            if let held = entry.held.removeValue(forKey: address) {
                entry.heldBytes -= held.message.bytes.count - held.consumed
                held.message.release()
                entry.trimHeldOrder()
                return
            }
            if let offset = entry.area.offset(of: UnsafeMutableRawPointer(bitPattern: address)!), entry.reserved.removeValue(forKey: offset) != nil {
                entry.area.free(offset)
                return
            }
            throw Failure(EINVAL, "sio_release_buffer: \(UnsafeRawPointer(bitPattern: address)!) is not a buffer this area handed out and the program still holds "
                + "(released already, sent, or from another area)")
        }
        return 0
    }
}
