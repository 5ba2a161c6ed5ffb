/// The connections of an event channel, by identifier: it owns each connection's
/// ``ConnectionCore``, the lookup every completion makes.
///
/// Cores live side by side in slots of one buffer (a slab); a free slot is reused. A
/// direct-mapped front (entry `id % 64`) finds a slot with one load and a comparison, where a
/// dictionary would hash the key; identifiers are handed out in sequence, so up to 64
/// connections alive at the same time never share an entry. The dictionary behind it answers
/// when the front does not.
///
/// ``core(_:)`` hands out a pointer to the core in place: no copy, no reference counting. It is
/// valid while the registry neither grows nor removes that core, which only ``insert(_:)`` and
/// ``remove(_:)`` do; the channel's state calls them apart from any use of such a pointer.
struct ConnectionRegistry: ~Copyable {
    private static let frontEntries = 64

    private var slots: UnsafeMutablePointer<ConnectionCore>
    /// The identifier in each slot; 0 for a free slot (identifiers start at 1).
    private var occupant: UnsafeMutablePointer<UInt32>
    private var capacity: Int
    private var freeSlots: [Int32] = []
    private var slotByID: [UInt32: Int32] = [:]
    private let front: UnsafeMutablePointer<(id: UInt32, slot: Int32)>
    /// How many connections the registry holds.
    private(set) var count = 0

    init() {
        capacity = 8
        slots = .allocate(capacity: capacity)
        occupant = .allocate(capacity: capacity)
        occupant.initialize(repeating: 0, count: capacity)
        front = .allocate(capacity: Self.frontEntries)
        front.initialize(repeating: (0, 0), count: Self.frontEntries)
        freeSlots = (0..<Int32(capacity)).reversed()
    }

    deinit {
        for slot in 0..<capacity where occupant[slot] != 0 { (slots + slot).move().tearDown() }
        slots.deallocate()
        occupant.deallocate()
        front.deallocate()
    }

    var isEmpty: Bool { count == 0 }

    /// The core of connection `id`, in place; nil when there is none.
    @inline(__always)
    func core(_ id: UInt32) -> UnsafeMutablePointer<ConnectionCore>? {
        let entry = front[Int(id) & (Self.frontEntries - 1)]
        if entry.id == id, id != 0 { return slots + Int(entry.slot) }
        return lookUp(id)
    }

    @inline(never)
    private func lookUp(_ id: UInt32) -> UnsafeMutablePointer<ConnectionCore>? {
        guard let slot = slotByID[id] else { return nil }
        return slots + Int(slot)
    }

    /// Takes `core` in; a pointer to it.
    mutating func insert(_ core: consuming ConnectionCore) -> UnsafeMutablePointer<ConnectionCore> {
        let id = core.id.rawValue
        if freeSlots.isEmpty { grow() }
        let slot = freeSlots.removeLast()
        (slots + Int(slot)).initialize(to: core)
        occupant[Int(slot)] = id
        slotByID[id] = slot
        front[Int(id) & (Self.frontEntries - 1)] = (id, slot)
        count += 1
        return slots + Int(slot)
    }

    /// Takes connection `id` out and tears it down (``ConnectionCore/tearDown()``).
    mutating func remove(_ id: UInt32) {
        guard let slot = slotByID.removeValue(forKey: id) else { return }
        occupant[Int(slot)] = 0
        freeSlots.append(slot)
        let entry = Int(id) & (Self.frontEntries - 1)
        if front[entry].id == id { front[entry] = (0, 0) }
        count -= 1
        (slots + Int(slot)).move().tearDown()
    }

    /// Every connection's identifier, for the rare paths that visit them all (the keepalive
    /// sweep, the channel's teardown).
    var identifiers: Dictionary<UInt32, Int32>.Keys { slotByID.keys }

    /// Doubles the slab: cores move to the new buffer.
    private mutating func grow() {
        let newCapacity = capacity * 2
        let newSlots = UnsafeMutablePointer<ConnectionCore>.allocate(capacity: newCapacity)
        let newOccupant = UnsafeMutablePointer<UInt32>.allocate(capacity: newCapacity)
        newOccupant.initialize(repeating: 0, count: newCapacity)
        for slot in 0..<capacity where occupant[slot] != 0 {
            (newSlots + slot).initialize(to: (slots + slot).move())
            newOccupant[slot] = occupant[slot]
        }
        slots.deallocate()
        occupant.deallocate()
        slots = newSlots
        occupant = newOccupant
        freeSlots = (Int32(capacity)..<Int32(newCapacity)).reversed()
        capacity = newCapacity
    }
}
