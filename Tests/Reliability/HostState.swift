import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// What a host holds, read from the kernel: verbs objects on the device (`rdma resource show`),
/// memory this process registered (`rdma resource show mr`), its resident memory, its open
/// descriptors, and the device's error counters.
struct HostState: Equatable {
    /// pd, cq, qp, cm_id, mr, srq on the device (every process: the VM runs this tool alone).
    var objects: [String: Int]
    var registeredBytes: Int
    var resident: Resident
    var openDescriptors: Int

    static func now(device: String) throws -> HostState {
        HostState(objects: try objects(on: device), registeredBytes: try registeredBytes(),
                  resident: resident(), openDescriptors: openDescriptors())
    }

    /// `0: rxe0: pd 1 cq 2 qp 1 cm_id 0 mr 1 ctx 1 srq 0` → its counts, without ctx.
    static func objects(on device: String) throws -> [String: Int] {
        for line in try rdma(["resource", "show"]).split(separator: "\n") {
            let words = line.split(separator: " ")
            guard words.count > 2, words[1] == "\(device):" else { continue }
            var counts: [String: Int] = [:]
            for index in stride(from: 2, to: words.count - 1, by: 2) where words[index] != "ctx" {
                counts[String(words[index])] = Int(words[index + 1])
            }
            return counts
        }
        throw ReliabilityError("rdma resource show has no line for \(device)")
    }

    /// The lengths of this process's memory regions (`rdma -j resource show mr`).
    static func registeredBytes() throws -> Int {
        let json = try rdma(["-j", "resource", "show", "mr"])
        guard let entries = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [[String: Any]] else { return 0 }
        let me = Int(getpid())
        return entries.filter { ($0["pid"] as? Int) == me }.reduce(0) { $0 + (($1["mrlen"] as? Int) ?? 0) }
    }

    /// This process's resident memory, from /proc/self/status: all of it (VmRSS), and the part
    /// that is anonymous memory (RssAnon: heap, stacks, the areas) rather than pages of mapped
    /// files (RssFile: the program and its libraries, faulted in and dropped by the kernel as
    /// it pleases), and how much of the anonymous part sits in transparent huge pages. A leak
    /// grows the anonymous part.
    static func resident() -> Resident {
        let status = kilobyteFields(of: "/proc/self/status")
        return Resident(total: status["VmRSS:"] ?? 0, anonymous: status["RssAnon:"] ?? 0, file: status["RssFile:"] ?? 0,
                        hugePages: kilobyteFields(of: "/proc/self/smaps_rollup")["AnonHugePages:"] ?? 0)
    }

    /// The `Name:   N kB` lines of a /proc file, in bytes by name (colon included).
    private static func kilobyteFields(of path: String) -> [Substring: Int] {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        var fields: [Substring: Int] = [:]
        for line in text.split(separator: "\n") {
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if words.count >= 2, let kilobytes = Int(words[1]) { fields[words[0]] = kilobytes << 10 }
        }
        return fields
    }

    struct Resident: Equatable {
        var total = 0
        var anonymous = 0
        var file = 0
        /// Anonymous memory in transparent huge pages (AnonHugePages, /proc/self/smaps_rollup):
        /// 0 while the suite runs with them disabled.
        var hugePages = 0

        var description: String {
            "\(formatBytes(total)) (anonymous \(formatBytes(anonymous)) of which huge pages \(formatBytes(hugePages)), files \(formatBytes(file)))"
        }
    }

    static func openDescriptors() -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
    }

    /// A device error counter (`/sys/class/infiniband/DEV/ports/1/hw_counters/NAME`).
    static func counter(_ name: String, device: String) -> Int {
        let text = try? String(contentsOfFile: "/sys/class/infiniband/\(device)/ports/1/hw_counters/\(name)", encoding: .utf8)
        return Int(text?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? -1
    }

    static func describe(_ objects: [String: Int]) -> String {
        objects.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
    }
}

/// Runs the `rdma` tool; its standard output.
func rdma(_ arguments: [String]) throws -> String {
    try runTool("rdma", arguments)
}

/// Runs a system tool to the end; its standard output, or an error with its standard error.
@discardableResult
func runTool(_ name: String, _ arguments: [String]) throws -> String {
    let process = Process()
    let path = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) } ?? name
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    let output = out.fileHandleForReading.readDataToEndOfFile()
    let errors = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
        throw ReliabilityError("\(name) \(arguments.joined(separator: " ")) failed (\(process.terminationStatus)): \(String(decoding: errors, as: UTF8.self))")
    }
    return String(decoding: output, as: UTF8.self)
}

func formatBytes(_ bytes: Int) -> String {
    if bytes >= 1 << 20 { return String(format: "%.2f MiB", Double(bytes) / Double(1 << 20)) }
    if bytes >= 1 << 10 { return String(format: "%.1f KiB", Double(bytes) / Double(1 << 10)) }
    return "\(bytes) B"
}
