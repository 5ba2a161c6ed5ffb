import RDMAVerbs

/// A received message, where the device wrote it inside the ``DMAArea`` — what the
/// proposal's `aio_recv(socket, void **buffer, ...)` hands out.
///
/// Non-copyable: ``release()`` (the proposal's `sio_release`) consumes it, so a buffer cannot
/// be released twice, and its ``bytes`` — a `RawSpan` that borrows the buffer — cannot be read
/// after its slot went back to the device:
///
/// ```swift
/// let message = try connection.receive()!
/// let bytes = message.bytes
/// message.release()                          // error: 'message' is borrowed by 'bytes'
/// message.release()                          // error: 'message' used after consume
/// ```
///
/// A buffer dropped without ``release()`` is released then. Releasing re-posts the slot as a
/// receive and hands a credit back to the sender. A buffer may outlive its ``Connection`` and
/// be handed to another task or thread (it is `Sendable`: it is its slot's only owner): the
/// bytes stay valid until it is released.
public struct ReceivedBuffer: ~Copyable, @unchecked Sendable {
    /// Unretained: the channel keeps itself alive while it holds connections
    /// (``ChannelState/keptAlive``), and a connection stays while its buffers are out, so that
    /// a message costs no reference counting.
    private let channel: Unmanaged<EventChannel>
    private let connectionNumber: UInt32
    let slot: Int
    private let start: UnsafeRawPointer
    /// The message's length in bytes.
    public let count: Int

    init(channel: EventChannel, connection: UInt32, slot: Int, bytes: UnsafeRawBufferPointer) {
        self.channel = .passUnretained(channel)
        connectionNumber = connection
        self.slot = slot
        start = bytes.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!
        count = bytes.count
    }

    /// The connection the message arrived on.
    public var connection: Connection.ID { Connection.ID(rawValue: connectionNumber) }

    /// The message's bytes, inside the area (zero-copy), for as long as the buffer is held.
    public var bytes: RawSpan {
        @_lifetime(borrow self)
        borrowing get {
            let span = RawSpan(_unsafeStart: start, byteCount: count)
            return _overrideLifetime(span, borrowing: self)
        }
    }

    /// Gives `body` the message's bytes, inside the area. The pointer must not be used after
    /// `body` returns.
    public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try body(UnsafeRawBufferPointer(start: start, count: count))
    }

    /// The message's bytes as a raw pointer, valid until the buffer is released: the escape
    /// hatch, for code that keeps the pointer by hand (the C ABI, ``Connection/receiveRetained()``).
    package var unsafeBytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: start, count: count) }

    /// Gives the slot back (out of order is fine): re-posts it as a receive work request and
    /// returns a credit to the sender. The proposal's `sio_release`, for one buffer. Slots are
    /// re-posted a few at a time, with one call (a quarter of the grant, at most 16; at once
    /// when the sender may be out of credits).
    ///
    /// The corresponding C function is `ibv_post_recv`.
    public consuming func release() {
        // deinit does the work.
    }

    /// Turns the buffer into a plain value the C ABI can keep while a C program holds the
    /// pointer; ``DetachedMessage/release()`` must then be called exactly once.
    package consuming func detach() -> DetachedMessage {
        let message = DetachedMessage(channel: channel, connection: connectionNumber, slot: slot, bytes: unsafeBytes)
        discard self
        return message
    }

    deinit {
        releaseHeld(slot: slot, of: connectionNumber, on: channel)
    }
}

/// Gives a held slot back to its connection (``EventChannel/release(slot:of:)``). The last
/// buffer of the channel's last, closed connection ends the channel's hold on itself; the
/// channel goes once that reference is dropped, after the call, not inside it.
@inline(__always)
private func releaseHeld(slot: Int, of connection: UInt32, on channel: Unmanaged<EventChannel>) {
    let kept = channel._withUnsafeGuaranteedRef { $0.release(slot: slot, of: connection) }
    withExtendedLifetime(kept) {}
}

/// A received message whose release is managed by hand (the C ABI's `aio_recv` hands out a raw
/// pointer): release it exactly once.
package struct DetachedMessage: @unchecked Sendable {
    /// Unretained, as ``ReceivedBuffer``'s.
    let channel: Unmanaged<EventChannel>
    let connection: UInt32
    let slot: Int
    /// The message's bytes, inside the area.
    package let bytes: UnsafeRawBufferPointer

    /// Re-posts the slot and returns a credit to the sender, like ``ReceivedBuffer/release()``.
    package func release() {
        releaseHeld(slot: slot, of: connection, on: channel)
    }
}
