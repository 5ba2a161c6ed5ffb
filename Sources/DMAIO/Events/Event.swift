import RDMAVerbs

/// What an ``EventChannel`` reports — the results of asynchronous operations, in the manner of
/// the proposal's event channels.
///
/// Plain values without references: taking one allocates nothing.
public enum Event: Sendable, Hashable {
    /// A send completed; its buffer is back in the area. Carries the cookie given to
    /// ``Connection/send(_:cookie:)``.
    case sent(connection: Connection.ID, cookie: UInt64)
    /// A message of `length` bytes arrived; ``Connection/receive()`` hands it out, in order. A
    /// message that `receive()` handed out before it was announced is not announced.
    case received(connection: Connection.ID, length: Int)
    /// The connection is established and associated: sends and receives can start.
    case connected(connection: Connection.ID)
    /// The peer closed the connection, or it broke. Unsent messages were reported as
    /// ``sendFailed(connection:cookie:status:)``.
    case disconnected(connection: Connection.ID)
    /// A send did not complete; its buffer is back in the area. `status` is the verbs
    /// work-completion status (its description is the library's text for it).
    case sendFailed(connection: Connection.ID, cookie: UInt64, status: WorkCompletion.Status)
    /// A receive failed on the connection (the connection is unusable afterwards).
    case receiveFailed(connection: Connection.ID, status: WorkCompletion.Status)
    /// The connection's queue pair failed — the peer stopped answering for a while, or the link
    /// to it went down — and the connection is resuming on a new one. Sends queue meanwhile;
    /// nothing is lost. ``resumed(connection:)`` follows, or ``disconnected(connection:)`` when
    /// the peer does not come back within ``Connection/resumeDeadline``.
    case interrupted(connection: Connection.ID)
    /// An interrupted connection is back: what the peer did not receive was sent again, in
    /// order, and data flows.
    case resumed(connection: Connection.ID)
}
