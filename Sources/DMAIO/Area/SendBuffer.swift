import RDMAVerbs

/// A buffer reserved inside a ``DMAArea`` for sending — what the proposal's `sio_reserve`
/// returns.
///
/// Non-copyable: ``Connection/send(_:cookie:)`` consumes it, so the compiler rules out writing
/// into a buffer after it was handed to the device, and sending it twice:
///
/// ```swift
/// let buffer = try area.reserve(64)
/// try connection.send(buffer, cookie: 1)
/// try connection.send(buffer, cookie: 2)   // error: 'buffer' used after consume
/// ```
///
/// A buffer dropped without being sent goes back to the area.
public struct SendBuffer: ~Copyable {
    // Unmanaged keeps the stored properties trivial, so that `consume` can hand the reference on.
    private let areaReference: Unmanaged<DMAArea>
    let offset: Int
    /// The number of bytes reserved and sent.
    public let count: Int

    /// A buffer over a block taken with ``DMAArea/allocate(_:for:)``; it owns the block now.
    package init(area: DMAArea, offset: Int, count: Int) {
        areaReference = .passRetained(area)
        self.offset = offset
        self.count = count
    }

    /// The area the buffer belongs to.
    public var area: DMAArea { areaReference.takeUnretainedValue() }

    /// The buffer's first byte: inside the area's registered memory (zero-copy).
    public var baseAddress: UnsafeMutableRawPointer { area.address(offset) }

    /// Gives `body` the bytes to fill.
    public func withUnsafeMutableBytes<R, E: Error>(_ body: (UnsafeMutableRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try body(UnsafeMutableRawBufferPointer(start: baseAddress, count: count))
    }

    /// Hands the block and the area reference to the send path without freeing it.
    consuming func take() -> (area: Unmanaged<DMAArea>, offset: Int, count: Int) {
        let parts = (areaReference, offset, count)
        discard self
        return parts
    }

    deinit {
        areaReference.takeUnretainedValue().free(offset)
        areaReference.release()
    }
}
