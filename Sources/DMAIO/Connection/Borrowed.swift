/// A reference the data path uses without reference counting: an unretained copy of a
/// reference that something else owns.
///
/// Reading a class reference out of a `var` and calling into C with it costs a retain and a
/// release (the compiler cannot know that the C call leaves the variable alone); a few of them
/// per message were a visible share of the data path. The owner (a strong stored property next
/// to this one, kept in step with it) must outlive every ``with(_:)``.
struct Borrowed<Object: AnyObject> {
    private let reference: Unmanaged<Object>

    init(_ object: Object) { reference = .passUnretained(object) }

    /// Whether `other` is the same object.
    @inline(__always)
    func refers(to other: Unmanaged<Object>) -> Bool { reference.toOpaque() == other.toOpaque() }

    /// Runs `body` with the object, neither retained nor released.
    @inline(__always)
    func with<R, E: Error>(_ body: (Object) throws(E) -> R) throws(E) -> R {
        try reference._withUnsafeGuaranteedRef { object in Result { () throws(E) -> R in try body(object) } }.get()
    }
}
