import RDMAVerbs

/// A received message, where the device wrote it inside the ``DMAArea`` — what the
/// proposal's `aio_recv(socket, void **buffer, ...)` hands out.
///
/// Non-copyable: ``release()`` (the proposal's `sio_release`) consumes it, so a buffer cannot
/// be released twice or read after its slot went back to the device:
///
/// ```swift
/// let message = try connection.receive()!
/// message.release()
/// message.release()                          // error: 'message' used after consume
/// ```
///
/// A buffer dropped without ``release()`` is released then. Releasing re-posts the slot as a
/// receive and hands a credit back to the sender. A buffer may outlive its ``Connection``:
/// the bytes stay valid until it is released.
public struct ReceivedBuffer: ~Copyable {
    /// Unretained: the state keeps itself alive while buffers are out
    /// (``ConnectionState/keepForBuffers()``), so that a message costs no reference counting.
    private let owner: Unmanaged<ConnectionState>
    let slot: Int
    /// The message's bytes, inside the area (zero-copy).
    public let bytes: UnsafeRawBufferPointer

    init(owner: ConnectionState, slot: Int, bytes: UnsafeRawBufferPointer) {
        self.owner = .passUnretained(owner)
        self.slot = slot
        self.bytes = bytes
    }

    /// The connection the message arrived on.
    public var connection: Connection.ID { owner.takeUnretainedValue().id }

    /// The message's length in bytes.
    public var count: Int { bytes.count }

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
        let bytes = self.bytes
        let (owner, slot) = disown()
        return DetachedMessage(owner: Unmanaged.passUnretained(owner), slot: slot, bytes: bytes)
    }

    /// Gives up the buffer without releasing its slot; the caller holds the state from now.
    consuming func disown() -> (owner: ConnectionState, slot: Int) {
        let owner = self.owner.takeUnretainedValue()
        let slot = self.slot
        discard self
        return (owner, slot)
    }

    deinit {
        releaseHeld(slot: slot, of: owner)
    }
}

/// Gives a held slot back to its connection (``EventChannel/release(slot:of:)``). The last
/// buffer of a closed connection ends the state's hold on itself; the state goes once that
/// reference is dropped, after the call, not inside it.
@inline(__always)
private func releaseHeld(slot: Int, of owner: Unmanaged<ConnectionState>) {
    let kept = owner._withUnsafeGuaranteedRef { $0.channel.release(slot: slot, of: $0) }
    withExtendedLifetime(kept) {}
}

/// A received message whose release is managed by hand (the C ABI's `aio_recv` hands out a raw
/// pointer): release it exactly once.
package struct DetachedMessage {
    /// Unretained, as ``ReceivedBuffer``'s: the state keeps itself alive while it is held.
    let owner: Unmanaged<ConnectionState>
    let slot: Int
    /// The message's bytes, inside the area.
    package let bytes: UnsafeRawBufferPointer

    /// Re-posts the slot and returns a credit to the sender, like ``ReceivedBuffer/release()``.
    package func release() {
        releaseHeld(slot: slot, of: owner)
    }
}
