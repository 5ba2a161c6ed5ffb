/// The connections of an ``EventChannel`` by identifier: the lookup that every completion makes.
///
/// A direct-mapped front (slot `id % 64`) answers with one array load and a comparison, where a
/// dictionary would hash the key; identifiers are handed out in sequence, so up to 64
/// connections alive at the same time never share a slot. The dictionary behind it holds every
/// connection and answers when the front does not.
///
/// Not thread-safe: the channel's lock serialises access.
struct ConnectionTable {
    private static let frontSlots = 64
    private var front = ContiguousArray<ConnectionState?>(repeating: nil, count: frontSlots)
    private var all: [UInt32: ConnectionState] = [:]

    subscript(id: UInt32) -> ConnectionState? {
        @inline(__always) get {
            if let state = front[Self.slot(id)], state.id.rawValue == id { return state }
            return all.isEmpty ? nil : all[id]
        }
        set {
            all[id] = newValue
            let slot = Self.slot(id)
            if let newValue {
                front[slot] = newValue
            } else if front[slot]?.id.rawValue == id {
                // Another live connection of this slot, if any, is found in `all`.
                front[slot] = nil
            }
        }
    }

    @inline(__always)
    private static func slot(_ id: UInt32) -> Int { Int(id) & (frontSlots - 1) }
}
