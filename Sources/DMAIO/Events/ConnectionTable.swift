/// The connections of an ``EventChannel`` by identifier: the lookup that every completion makes.
///
/// A direct-mapped front (slot `id % 64`) answers with one load and a comparison, where a
/// dictionary would hash the key; identifiers are handed out in sequence, so up to 64
/// connections alive at the same time never share a slot. The dictionary behind it owns every
/// connection and answers when the front does not; the front only borrows them, and
/// ``withConnection(_:_:)`` counts no references. A class, held in a `let`, so that a lookup
/// copies (retains) neither table.
///
/// Not thread-safe: the channel's lock serialises access.
final class ConnectionTable {
    private static let frontSlots = 64
    private let front: UnsafeMutableBufferPointer<Borrowed<ConnectionState>?>
    @exclusivity(unchecked) private var all: [UInt32: ConnectionState] = [:]

    init() {
        front = .allocate(capacity: Self.frontSlots)
        front.initialize(repeating: nil)
    }

    deinit {
        front.deallocate()
    }

    subscript(id: UInt32) -> ConnectionState? {
        get { all[id] }
        set {
            all[id] = newValue
            let slot = Self.slot(id)
            if let newValue {
                front[slot] = Borrowed(newValue)
            } else if let borrowed = front[slot], borrowed.with({ $0.id.rawValue == id }) {
                // Another live connection of this slot, if any, is found in `all`.
                front[slot] = nil
            }
        }
    }

    /// Every connection, for the rare paths that visit them all (the keepalive sweep).
    var states: Dictionary<UInt32, ConnectionState>.Values { all.values }

    /// Runs `body` with connection `id`, borrowed, or does nothing when there is none.
    @inline(__always)
    func withConnection<E: Error>(_ id: UInt32, _ body: (ConnectionState) throws(E) -> Void) throws(E) {
        if let borrowed = front[Self.slot(id)], borrowed.with({ $0.id.rawValue == id }) { return try borrowed.with(body) }
        if let state = all[id] { try body(state) }
    }

    @inline(__always)
    private static func slot(_ id: UInt32) -> Int { Int(id) & (frontSlots - 1) }
}
