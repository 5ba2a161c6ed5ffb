import DMAIO
import Foundation
import RDMAVerbs

/// The soak: a million stamped messages from host 1 to host 0.
enum Soak: ReliabilityCase {
    static let name = "soak"
    static let title = "Soak: 1,000,000 messages"
    static let summary = "1,000,000 stamped messages from host 1 to host 0; none lost, duplicated or corrupted, and anonymous resident and registered memory flat."
    static let procedure = """
        Host 1 sends 1,000,000 messages of 64 B (sequence number, stream, length, payload and \
        an FNV-1a checksum) to host 0, 64 in flight. Host 0 checks each one: lost, duplicated or \
        reordered, corrupted must all be 0. Both hosts read their resident memory \
        (/proc/self/status) and their registered memory (`rdma resource show mr`) after 10,000 \
        messages, every 100,000 and at the end: both must be flat. Registered memory must not \
        change; the anonymous part of resident memory (RssAnon: heap, stacks, areas, where a \
        leak would show) must grow by less than 256 KiB, which a leak of one small allocation \
        in every hundred messages would exceed. Pages of the program's files (RssFile) are \
        reported, not judged: the kernel maps and drops them as it pleases. The suite runs with \
        transparent huge pages disabled (prctl PR_SET_THP_DISABLE): where the kernel's setting \
        is "always", as Debian's is, khugepaged may fold a 2 MiB stretch of the heap into one \
        huge page at any moment, a 2 MiB step of RssAnon with nothing allocated.
        """
    /// The most the anonymous resident memory may grow between the warm-up and the end.
    static let anonymousGrowthBound = 256 << 10
    static let size = 64
    static let warmUp = 10_000

    static func host0(_ session: Session, _ record: inout CaseRecord) throws { try host0(session, &record, loaded: false) }
    static func host1(_ session: Session, _ record: inout CaseRecord) throws { try host1(session, &record, loaded: false) }

    /// Host 0's side; `loaded`: with a busy loop on every vCPU meanwhile (``LoadedSoak``).
    static func host0(_ session: Session, _ record: inout CaseRecord, loaded: Bool) throws {
        let count = session.soakMessages
        let events = try EventChannel()
        let area = try DMAArea(size: 4 << 20)
        let listener = try Listener(on: "\(session.address):\(session.port(0, of: name))", events: events)
        try session.control.send("listening", "\(count)")
        let connection = try Endpoints.accept(1, on: listener, area: area, receiveBytes: 128 * 64, slotSize: 64)[0]
        let traffic = Traffic(events: events, area: area, size: size)
        let flow = traffic.add(connection, stream: 0)
        let hog = loaded ? try CPUHog(record: &record) : nil
        defer { hog?.stop() }
        let start = ContinuousClock.now
        try traffic.run(until: { flow.account.received >= min(warmUp, count) }, timeout: .seconds(300), what: "the soak's warm-up")
        let early = try HostState.now(device: session.device)
        record.log("after the warm-up: resident \(early.resident.description)")
        var next = 100_000
        try traffic.run(until: {
            if flow.account.received >= next {
                record.log("\(flow.account.received) messages, \((ContinuousClock.now - start).millisecondsText), resident \(HostState.resident().description)")
                next += 100_000
            }
            return flow.account.received >= count || flow.broken
        }, timeout: .seconds(5400), what: "the soak")
        let elapsed = ContinuousClock.now - start
        let late = try HostState.now(device: session.device)
        let account = flow.account
        record.did("received \(account.received) messages in \(String(format: "%.1f", elapsed.seconds)) s")
        record.check(account.received == count, "\(account.received) of \(count) messages arrived")
        record.check(account.lost == 0 && account.duplicated == 0 && account.corrupted == 0,
                     "lost \(account.lost), duplicated or reordered \(account.duplicated), corrupted \(account.corrupted)")
        record.check(!flow.broken, "no error: \(flow.errors)")
        check(early, late, &record)
        record.figure("*lost / duplicated / corrupted", "\(account.lost) / \(account.duplicated) / \(account.corrupted)")
        record.figure("*rate", String(format: "%.0f messages/s", Double(account.received) / elapsed.seconds))
        record.figure("*interrupted (host 0)", interruptions(flow))
        try session.control.expect("sent", timeout: .seconds(120))
        connection.close()
    }

    static func host1(_ session: Session, _ record: inout CaseRecord, loaded: Bool) throws {
        let words = try session.control.expect("listening", timeout: .seconds(60))
        guard let count = words.first.flatMap({ Int($0) }) else { throw ReliabilityError("no message count from host 0") }
        let events = try EventChannel()
        let area = try DMAArea(size: 4 << 20)
        let connection = try Endpoints.connect(to: session.serverAddress, port: session.port(0, of: name), events: events, area: area, receiveBytes: 128 * 64, slotSize: 64)
        let traffic = Traffic(events: events, area: area, size: size)
        let flow = traffic.add(connection, stream: 0, budget: count, window: 64)
        let hog = loaded ? try CPUHog(record: &record) : nil
        defer { hog?.stop() }
        try traffic.run(until: { flow.completed >= min(warmUp, count) || flow.broken }, timeout: .seconds(300), what: "the soak's warm-up")
        let early = try HostState.now(device: session.device)
        record.log("after the warm-up: resident \(early.resident.description)")
        var next = 100_000
        try traffic.run(until: {
            if flow.completed >= next {
                record.log("\(flow.completed) messages sent, resident \(HostState.resident().description)")
                next += 100_000
            }
            return flow.completed + flow.failed == count || flow.broken
        }, timeout: .seconds(5400), what: "the soak")
        let late = try HostState.now(device: session.device)
        record.did("sent \(flow.sent) messages")
        record.check(flow.completed == count && flow.failed == 0, "\(flow.completed) of \(count) sends completed, \(flow.failed) failed: \(flow.errors)")
        check(early, late, &record)
        record.figure("*interrupted (host 1)", interruptions(flow))
        try session.control.send("sent")
        connection.close()
    }

    /// How often the connection was interrupted and resumed, and for how long.
    static func interruptions(_ flow: Traffic.Flow) -> String {
        flow.interruptions.isEmpty ? "never" : "\(flow.interruptions.count) time(s), resumed after " + flow.interruptedFor.map(\.millisecondsText).joined(separator: ", ")
    }

    static func check(_ early: HostState, _ late: HostState, _ record: inout CaseRecord) {
        record.check(late.registeredBytes == early.registeredBytes,
                     "registered memory flat: \(formatBytes(early.registeredBytes)) after \(warmUp) messages, \(formatBytes(late.registeredBytes)) at the end")
        let growth = late.resident.anonymous - early.resident.anonymous
        record.check(growth < anonymousGrowthBound,
                     "anonymous resident memory flat (grew \(formatBytes(growth)), bound \(formatBytes(anonymousGrowthBound))): \(formatBytes(early.resident.anonymous)) after \(warmUp) messages, \(formatBytes(late.resident.anonymous)) at the end")
        record.figure("*resident (host \(record.host))", "\(early.resident.description) → \(late.resident.description)")
        record.figure("*registered (host \(record.host))", "\(formatBytes(early.registeredBytes)) → \(formatBytes(late.registeredBytes))")
    }
}

/// The soak while both hosts are loaded: a busy loop on every vCPU of both VMs.
enum LoadedSoak: ReliabilityCase {
    static let name = "soak-loaded"
    static let title = "Soak under load: 1,000,000 messages, every vCPU busy"
    static let summary = "The soak while a busy loop runs on every vCPU of both hosts: none lost, duplicated or corrupted, memory flat; a stall long enough to fail a queue pair must be resumed, never end the connection."
    static let procedure = """
        As the soak (1,000,000 messages of 64 B from host 1 to host 0, 64 in flight, every one \
        checked, resident and registered memory read after 10,000 messages and at the end), \
        while each host runs one busy loop (`sh -c 'while :; do :; done'`) per online vCPU from \
        the warm-up to the end, so that the soak's processes compete for every CPU. A stall \
        that makes a queue pair fail (no acknowledgement for 1.9 s) must show as an \
        interruption that resumes (reported with its length), never as a lost message or an \
        ended connection.
        """

    static func host0(_ session: Session, _ record: inout CaseRecord) throws { try Soak.host0(session, &record, loaded: true) }
    static func host1(_ session: Session, _ record: inout CaseRecord) throws { try Soak.host1(session, &record, loaded: true) }
}

/// One busy loop per online vCPU, in processes of their own, until ``stop()``.
final class CPUHog {
    private var loops: [Process] = []

    init(record: inout CaseRecord) throws {
        let count = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        for _ in 0..<count {
            let loop = Process()
            loop.executableURL = URL(fileURLWithPath: "/bin/sh")
            loop.arguments = ["-c", "while :; do :; done"]
            try loop.run()
            loops.append(loop)
        }
        record.did("started \(count) busy loop(s), one per online vCPU")
    }

    func stop() {
        for loop in loops where loop.isRunning {
            loop.terminate()
            loop.waitUntilExit()
        }
        loops = []
    }

    deinit { stop() }
}
