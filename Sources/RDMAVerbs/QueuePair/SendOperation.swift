import CRDMA

/// What a send work request does.
///
/// The corresponding C type is `enum ibv_wr_opcode`.
public enum SendOperation: Sendable, Hashable {
    /// A two-sided send: consumes one receive request at the peer.
    case send
    /// A send that also carries 32 bits of immediate data, delivered in the peer's work
    /// completion (``WorkCompletion/immediateData``).
    case sendWithImmediate(UInt32)
}
