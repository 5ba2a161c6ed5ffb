import Foundation
import RDMAVerbs
import Testing

/// The soft-RoCE device these tests run on, as `rxe-setup vm` (or `rxe-setup up`) describes it
/// in the environment: RXE_DEVICE and RXE_ADDR. Tests fail, never skip, without one: the suite
/// exists to prove behaviour on a real device.
enum RxeEnvironment {
    static var deviceName: String { ProcessInfo.processInfo.environment["RXE_DEVICE"] ?? "rxe0" }
    static var address: String { ProcessInfo.processInfo.environment["RXE_ADDR"] ?? "10.99.0.1" }
    /// The second device and its address (rxe-setup makes two, joined by a veth pair).
    static var peerDeviceName: String { ProcessInfo.processInfo.environment["RXE_PEER_DEVICE"] ?? "rxe1" }
    static var peerAddress: String { ProcessInfo.processInfo.environment["RXE_PEER_ADDR"] ?? "10.99.0.2" }
    /// The index of the RoCE v2 GID of `address` (what `ibv_rc_pingpong -g` wants).
    static var gidIndex: String { ProcessInfo.processInfo.environment["RXE_GID_INDEX"] ?? "1" }

    /// Checks that the device exists and is a soft-RoCE (rxe) device, and says so on stdout
    /// (the test runner checks for this line to know the suite ran on rxe).
    static func requireRxeDevice() throws {
        let names = try Device.all().map(\.name)
        try #require(names.contains(deviceName), "no RDMA device \(deviceName) here (devices: \(names)); run the suite through rxe-setup vm")
        let driver = try String(contentsOfFile: "/sys/class/infiniband/\(deviceName)/parent", encoding: .utf8)
        try #require(!driver.isEmpty, "\(deviceName) has no parent netdev: not a soft-RoCE device")
        announce()
        // Built now, not inside a test's tasks: computing the 1 MiB table takes seconds under a
        // sanitizer, and would hold the two threads of the task pool while connections wait.
        _ = patternTable.count
    }

    private static let announced: Void = {
        print("rxe-integration: running on \(deviceName) (soft-RoCE over \(((try? String(contentsOfFile: "/sys/class/infiniband/\(deviceName)/parent", encoding: .utf8)) ?? "?").trimmingCharacters(in: .whitespacesAndNewlines)), address \(address))")
    }()

    static func announce() { _ = announced }

    /// A port that no other test uses at the same time.
    static func freshPort() -> UInt16 {
        portLock.lock()
        defer { portLock.unlock() }
        nextPort += 1
        return nextPort
    }
    nonisolated(unsafe) private static var nextPort: UInt16 = UInt16(20000 + getpid() % 20000)
    private static let portLock = NSLock()

    /// A hardware counter of soft-RoCE (`ports/1/hw_counters/NAME`), summed over every device:
    /// `completer_retry_err` (ACK timeouts), `rcvd_rnr_err` (receiver-not-ready answers).
    static func counter(_ name: String) -> Int {
        let devices = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/class/infiniband")) ?? []
        return devices.reduce(0) { sum, device in
            let path = "/sys/class/infiniband/\(device)/ports/1/hw_counters/\(name)"
            return sum + (Int((try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0)
        }
    }

    /// The directory holding the built products (the test bundle sits next to them).
    static var productsDirectory: URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
    }
}

/// Runs a program to the end and returns its exit status and output.
struct CommandResult {
    var status: Int32
    var standardOutput: String
    var standardError: String
}

func run(_ executable: String, _ arguments: [String], timeout: TimeInterval = 60) throws -> CommandResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    let deadline = Date().addingTimeInterval(timeout)
    // Read both pipes to the end (a full pipe would stall the child), then reap it.
    let group = DispatchGroup()
    nonisolated(unsafe) var outData = Data(), errData = Data()
    group.enter(); DispatchQueue.global().async { outData = out.fileHandleForReading.readDataToEndOfFile(); group.leave() }
    group.enter(); DispatchQueue.global().async { errData = err.fileHandleForReading.readDataToEndOfFile(); group.leave() }
    if group.wait(timeout: .now() + timeout) == .timedOut {
        process.terminate()
        Issue.record("\(executable) \(arguments) did not finish within \(timeout) s")
    }
    while process.isRunning && Date() < deadline + 5 { usleep(10_000) }
    process.waitUntilExit()
    return CommandResult(
        status: process.terminationStatus,
        standardOutput: String(decoding: outData, as: UTF8.self),
        standardError: String(decoding: errData, as: UTF8.self))
}

/// Finds a system tool in the usual places.
func tool(_ name: String) -> String {
    for directory in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] where FileManager.default.isExecutableFile(atPath: "\(directory)/\(name)") {
        return "\(directory)/\(name)"
    }
    return name
}
