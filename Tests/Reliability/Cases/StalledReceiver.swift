import DMAIO
import Foundation
import RDMAVerbs

/// Case 3: the receiver stops taking messages for 30 s.
enum StalledReceiver: ReliabilityCase {
    static let name = "stalled-receiver"
    static let title = "Receiver stalls for 30 s"
    static let summary = "Host 0 stops taking messages for 30 s while host 1 sends 400; credits must hold the sender back with no error and no RNR, and all 400 must arrive in order afterwards."
    static let procedure = """
        Host 0 grants 16 receive slots of 4 KiB, then stops calling the library at all for 30 s. \
        Host 1 sends 400 messages of 4 KiB meanwhile. The sender must be held back by credits — \
        16 sends complete, the rest wait in order in the library — with no error and no \
        receiver-not-ready (RNR) retry on either device (`hw_counters`); once host 0 resumes, \
        all 400 arrive in order, content checked.
        """
    static let messages = 400
    static let slots = 16
    static let rnrCounters = ["send_rnr_err", "rcvd_rnr_err", "retry_rnr_exceeded_err"]

    static func host0(_ session: Session, _ record: inout CaseRecord) throws {
        let events = try EventChannel()
        let area = try DMAArea(size: 8 << 20)
        let listener = try Listener(on: "\(session.address):\(session.port(0, of: name))", events: events)
        try session.control.send("listening")
        let connection = try Endpoints.accept(1, on: listener, area: area, receiveBytes: slots * 4096, slotSize: 4096)[0]
        let counters = rnrCounters.map { HostState.counter($0, device: session.device) }
        try session.control.send("stalling")
        record.did("granted \(slots) slots of 4 KiB, then made no library call for 30 s")
        pause(.seconds(30))
        try session.control.send("resuming")
        let traffic = Traffic(events: events, area: area, size: 4096)
        let flow = traffic.add(connection, stream: 0)
        try traffic.run(until: { flow.account.received >= messages }, timeout: .seconds(120), what: "receiving after the stall")
        record.check(flow.account.received == messages && flow.account.clean, "after the stall every message arrived in order: \(flow.account.summary)")
        record.check(!flow.broken, "no error on the receiving side: \(flow.errors)")
        let after = rnrCounters.map { HostState.counter($0, device: session.device) }
        record.check(after == counters && !after.contains(-1), "no RNR on this device: \(zip(rnrCounters, after).map { "\($0) \($1)" }.joined(separator: ", ")) (unchanged)")
        try session.control.expect("done", timeout: .seconds(60))
        connection.close()
    }

    static func host1(_ session: Session, _ record: inout CaseRecord) throws {
        let events = try EventChannel()
        let area = try DMAArea(size: 8 << 20)
        try session.control.expect("listening", timeout: .seconds(60))
        let connection = try Endpoints.connect(to: session.serverAddress, port: session.port(0, of: name), events: events, area: area, receiveBytes: slots * 4096, slotSize: 4096)
        let counters = rnrCounters.map { HostState.counter($0, device: session.device) }
        try session.control.expect("stalling", timeout: .seconds(60))
        let stallStart = ContinuousClock.now
        let traffic = Traffic(events: events, area: area, size: 4096)
        let flow = traffic.add(connection, stream: 0, budget: messages, window: messages)
        try traffic.run(until: { ContinuousClock.now - stallStart >= .seconds(5) }, timeout: .seconds(10), what: "the first 5 s of the stall")
        let early = flow.completed
        try traffic.run(until: { ContinuousClock.now - stallStart >= .seconds(25) }, timeout: .seconds(30), what: "the stall")
        let late = flow.completed
        record.did("queued all \(flow.sent) sends at once while host 0 stalled")
        record.check(early == late && late <= slots, "the sender was held back by credits: \(early) sends completed 5 s into the stall, \(late) at 25 s (\(slots) slots granted)")
        record.figure("*sends completed during the stall", "\(late) of \(messages)")
        record.check(!flow.broken && flow.failed == 0, "no error while held back: \(flow.errors)")
        try session.control.expect("resuming", timeout: .seconds(30))
        try traffic.run(until: { flow.completed + flow.failed == messages || flow.broken }, timeout: .seconds(120), what: "sending after the stall")
        record.check(flow.completed == messages && flow.failed == 0, "all \(messages) sends completed after the stall: \(flow.completed) completed, \(flow.failed) failed")
        let after = rnrCounters.map { HostState.counter($0, device: session.device) }
        record.check(after == counters && !after.contains(-1), "no RNR on this device: \(zip(rnrCounters, after).map { "\($0) \($1)" }.joined(separator: ", ")) (unchanged)")
        try session.control.send("done")
        connection.close()
    }
}
