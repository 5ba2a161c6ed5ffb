import Foundation
import Testing

/// The kernel's count of verbs objects per device, as `rdma resource show` prints it:
/// `0: rxe0: pd 1 cq 2 qp 1 cm_id 0 mr 1 ctx 1 srq 0`.
struct ResourceCounts: Equatable, CustomStringConvertible {
    var counts: [String: Int]

    subscript(_ kind: String) -> Int { counts[kind] ?? 0 }

    static func of(device: String) throws -> ResourceCounts {
        let result = try run(tool("rdma"), ["resource", "show"])
        try #require(result.status == 0, "rdma resource show failed: \(result.standardError)")
        for line in result.standardOutput.split(separator: "\n") {
            let words = line.split(separator: " ")
            guard words.count > 2, words[1] == "\(device):" else { continue }
            var counts: [String: Int] = [:]
            for index in stride(from: 2, to: words.count - 1, by: 2) {
                counts[String(words[index])] = Int(words[index + 1])
            }
            return ResourceCounts(counts: counts)
        }
        Issue.record("rdma resource show has no line for \(device): \(result.standardOutput)")
        return ResourceCounts(counts: [:])
    }

    /// The counts that tests create and must see released (contexts stay open in librdmacm).
    var objects: [String: Int] { counts.filter { ["pd", "cq", "qp", "mr", "srq", "cm_id"].contains($0.key) } }

    var description: String { counts.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: " ") }
}
