#if canImport(Glibc)
import Glibc
#endif

/// What a tool prints when its connection is interrupted (its queue pair failed) and when it
/// resumed, with how long it was interrupted: one line each on standard error, so that the
/// figures on standard output stay as they are.
public final class InterruptionLog {
    private let tool: String
    private var began: UInt64?
    /// Interruptions that resumed.
    public private(set) var resumptions = 0

    public init(tool: String) { self.tool = tool }

    private func write(_ line: String) {
        var line = line
        line.withUTF8 { _ = Glibc.write(STDERR_FILENO, $0.baseAddress, $0.count) }
    }

    public func interrupted() {
        began = MonotonicClock.nanoseconds()
        write("\(tool): the connection was interrupted (its queue pair failed): resuming\n")
    }

    public func resumed() {
        resumptions += 1
        let seconds = began.map { Double(MonotonicClock.nanoseconds() - $0) / 1e9 } ?? 0
        began = nil
        let rounded = (seconds * 100).rounded() / 100
        write("\(tool): the connection resumed after \(rounded) s; nothing was lost\n")
    }
}
