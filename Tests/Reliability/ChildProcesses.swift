import DMAIO
import Foundation
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

/// The processes some cases start on host 1: a peer to be killed, and a peer under a small
/// `RLIMIT_MEMLOCK`. They say what they saw as lines on standard output: `check ok|FAILED TEXT`
/// and `figure NAME VALUE` (`_` for spaces in NAME), which their parent copies into its record.
enum ChildProcesses {
    /// `child-stream ADDRESS PORT STREAM [COUNT]`: connects and sends stamped messages until
    /// killed (or for 10 minutes at most); with COUNT, sends COUNT and receives COUNT, reports
    /// what it saw (`check` and `figure` lines) and closes.
    static func stream(_ arguments: [String]) throws {
        guard arguments.count == 3 || arguments.count == 4, let port = UInt16(arguments[1]), let stream = UInt32(arguments[2]) else {
            throw ReliabilityError("usage: child-stream ADDRESS PORT STREAM [COUNT]")
        }
        let count = arguments.count == 4 ? Int(arguments[3]) : nil
        let events = try EventChannel()
        let area = try DMAArea(size: 2 << 20)
        let connection = try Endpoints.connect(to: arguments[0], port: port, events: events, area: area, receiveBytes: 16 << 10, slotSize: 1024)
        let traffic = Traffic(events: events, area: area, size: 1024)
        let flow = traffic.add(connection, stream: stream, budget: count ?? .max, window: 8)
        say("child-stream: connected, streaming")
        guard let count else {
            try traffic.run(until: { flow.broken }, timeout: .seconds(600), what: "child-stream")
            return
        }
        try traffic.run(until: { flow.broken || flow.completed + flow.failed == count && flow.account.received >= count },
                        timeout: .seconds(600), what: "child-stream")
        func check(_ condition: Bool, _ text: String) { say("check \(condition ? "ok" : "FAILED") \(text)") }
        check(!flow.broken && flow.completed == count, "the child's \(count) sends all completed: \(flow.completed) completed, \(flow.failed) failed \(flow.errors)")
        check(flow.account.received == count && flow.account.clean, "the child received all \(count) messages once, in order, intact: \(flow.account.summary)")
        say("figure *interrupted_(child) \(flow.interruptions.isEmpty ? "never" : flow.interruptedFor.map(\.millisecondsText).joined(separator: ", "))")
        connection.close()
    }

    /// `child-memlock ADDRESS PORT`: lowers RLIMIT_MEMLOCK to 64 KiB (its parent dropped
    /// CAP_IPC_LOCK, which would lift it), then asks for a large area and a small one, and sends
    /// 20 messages to host 0 through the small one.
    static func memoryLockLimit(_ arguments: [String]) throws {
        guard arguments.count == 2, let port = UInt16(arguments[1]) else { throw ReliabilityError("usage: child-memlock ADDRESS PORT") }
        func check(_ condition: Bool, _ text: String) { say("check \(condition ? "ok" : "FAILED") \(text)") }
        var limit = rlimit(rlim_cur: 64 << 10, rlim_max: 64 << 10)
        guard setrlimit(__rlimit_resource_t(__RLIMIT_MEMLOCK.rawValue), &limit) == 0 else { throw ReliabilityError("setrlimit: errno \(errno)") }
        let current = MemoryLockLimit.current()
        check(current.bytes == 64 << 10 && !current.hasIPCLockCapability,
              "the child runs with RLIMIT_MEMLOCK \(current.bytes.map(formatBytes) ?? "unlimited") and \(current.hasIPCLockCapability ? "with" : "without") CAP_IPC_LOCK")
        do {
            _ = try DMAArea(size: 1 << 20)
            check(false, "a 1 MiB area was registered under a 64 KiB RLIMIT_MEMLOCK")
        } catch {
            check(error.code == .memoryLockLimit && error.errno == .noMemory,
                  "a 1 MiB area is refused with \(error.code) (errno \(error.errno.map { "\($0.rawValue)" } ?? "none"))")
            check(error.message.contains("RLIMIT_MEMLOCK") && error.message.contains("ulimit -l"),
                  "the error says which limit and how to raise it: \"\(error.description)\"")
            say("figure *1_MiB_area refused: \(error.code) (errno \(error.errno.map { "\($0.rawValue)" } ?? "none")), naming RLIMIT_MEMLOCK and ulimit -l")
        }
        let events = try EventChannel()
        let area = try DMAArea(size: 16 << 10)
        check(true, "a 16 KiB area is registered under the same limit")
        let connection = try Endpoints.connect(to: arguments[0], port: port, events: events, area: area, receiveBytes: 4 << 10, slotSize: 1024)
        let traffic = Traffic(events: events, area: area, size: 512)
        let flow = traffic.add(connection, stream: 7, budget: 20, window: 2)
        try traffic.run(until: { flow.completed + flow.failed == 20 || flow.broken }, timeout: .seconds(60), what: "memlock child")
        check(flow.completed == 20 && !flow.broken, "20 messages sent through the small area: \(flow.completed) completed, \(flow.failed) failed")
        connection.close()
    }

    /// Reads a started child's output to the end, waits for it, and folds its `check`/`figure`
    /// lines into `record`.
    static func collect(_ process: Process, output: Pipe, into record: inout CaseRecord) {
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            let words = line.split(separator: " ", maxSplits: 2).map(String.init)
            if words.count == 3, words[0] == "check" { record.check(words[1] == "ok", "child: \(words[2])") }
            if words.count == 3, words[0] == "figure" { record.figure(words[1].replacingOccurrences(of: "_", with: " "), words[2]) }
        }
    }
}
