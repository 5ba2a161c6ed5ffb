import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// What one host did and saw in one case: the report's raw material. Host 1 sends its record
/// to host 0 as one line of JSON; host 0 writes the report.
struct CaseRecord: Codable {
    var name: String
    var host: Int
    /// What this host did, in order.
    var actions: [String] = []
    /// What it saw; each check passed or failed.
    var observations: [Observation] = []
    /// Named measurements, in order.
    var figures: [Figure] = []

    struct Observation: Codable {
        var passed: Bool
        var text: String
    }

    struct Figure: Codable {
        var name: String
        var value: String
    }

    init(name: String, host: Int) {
        self.name = name
        self.host = host
    }

    var passed: Bool { !observations.isEmpty && observations.allSatisfy(\.passed) }

    mutating func did(_ action: String) {
        actions.append(action)
        log("did: \(action)")
    }

    /// Records a check; returns whether it held.
    @discardableResult
    mutating func check(_ condition: Bool, _ text: String) -> Bool {
        observations.append(Observation(passed: condition, text: text))
        log("\(condition ? "ok" : "FAILED"): \(text)")
        return condition
    }

    mutating func figure(_ name: String, _ value: String) {
        figures.append(Figure(name: name, value: value))
        log("figure: \(name) = \(value)")
    }

    func log(_ text: String) {
        say("[\(name)] \(text)")
    }
}

extension Duration {
    /// Milliseconds with one decimal, for reports.
    var millisecondsText: String {
        let ms = Double(components.seconds) * 1000 + Double(components.attoseconds) / 1e15
        return String(format: "%.1f ms", ms)
    }
}

/// Writes a line to standard output at once (the VM's console shows progress as it happens).
func say(_ line: String) {
    var text = line + "\n"
    text.withUTF8 { bytes in _ = write(1, bytes.baseAddress, bytes.count) }
}
