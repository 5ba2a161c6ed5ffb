import DMAIO
import Foundation
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

/// A peer process is stopped with SIGSTOP for 10 s mid-stream, then continued.
enum PeerStopped: ReliabilityCase {
    static let name = "peer-stopped"
    static let title = "Peer stopped for 10 s mid-stream"
    static let summary = "Host 1's child process, streaming both ways with host 0, is stopped with SIGSTOP for 10 s and continued; both streams must complete with nothing lost, duplicated, reordered or corrupted, and the connection must never end."
    static let procedure = """
        Host 1 starts a child process that connects to host 0 through rdma_cm; each sends the \
        other \(messages) stamped 1 KiB messages (8 in flight). Once 300 went each way, host 1 \
        stops the child with SIGSTOP, waits 10 s and continues it with SIGCONT. Meanwhile host 0 \
        goes on sending until the child's slots are full, then waits for credits (the stopped \
        child's kernel still acknowledges what arrives, so soft-RoCE keeps the queue pairs up; \
        should a queue pair fail, the connection must resume). Both streams must then complete: \
        every message once, in order, intact, every send reported sent, and no end of the \
        connection before the child closes it.
        """
    static let messages = 3_000
    static let stoppedFor: Duration = .seconds(10)

    static func host0(_ session: Session, _ record: inout CaseRecord) throws {
        let events = try EventChannel()
        let area = try DMAArea(size: 8 << 20)
        let listener = try Listener(on: "\(session.address):\(session.port(0, of: name))", events: events)
        try session.control.send("listening")
        let connection = try Endpoints.accept(1, on: listener, area: area, receiveBytes: 16 << 10, slotSize: 1024)[0]
        defer { connection.close() }
        let traffic = Traffic(events: events, area: area, size: 1024)
        let flow = traffic.add(connection, stream: 0, budget: messages, window: 8)
        try traffic.run(until: { flow.broken || flow.account.received >= 300 && flow.completed >= 300 }, timeout: .seconds(120), what: "streaming before the stop")
        try session.control.send("stop")
        record.did("asked host 1 to stop its child for \(stoppedFor) after \(flow.account.received) of its messages arrived and \(flow.completed) were sent")
        try traffic.run(until: { flow.broken || flow.account.received >= messages && flow.completed >= messages },
                        timeout: .seconds(240), what: "completing the streams across the stop")
        // The child closes once done: its end may come with the last completions.
        let errors = flow.errors.filter { $0 != "disconnected" }
        record.check(errors.isEmpty && flow.failed == 0, "no error on host 0 before the child's close: \(errors.isEmpty ? "none" : errors.prefix(3).joined(separator: "; "))")
        record.check(flow.account.received == messages && flow.account.clean, "all \(messages) of the child's messages arrived once, in order, intact: \(flow.account.summary)")
        record.check(flow.completed == messages, "every send to the child was reported sent: \(flow.completed) of \(messages)")
        record.figure("*interrupted (host 0)", flow.interruptions.isEmpty ? "never" : flow.interruptedFor.map(\.millisecondsText).joined(separator: ", "))
        try session.control.expect("done", timeout: .seconds(120))
    }

    static func host1(_ session: Session, _ record: inout CaseRecord) throws {
        try session.control.expect("listening", timeout: .seconds(60))
        let child = Process()
        child.executableURL = URL(fileURLWithPath: session.executable)
        child.arguments = ["child-stream", session.serverAddress, "\(session.port(0, of: name))", "1", "\(messages)"]
        let output = Pipe()
        child.standardOutput = output
        try child.run()
        record.did("started a child process (pid \(child.processIdentifier)) that streams \(messages) messages each way with host 0")
        try session.control.expect("stop", timeout: .seconds(120))
        kill(child.processIdentifier, SIGSTOP)
        let stoppedAt = ContinuousClock.now
        pause(stoppedFor)
        kill(child.processIdentifier, SIGCONT)
        record.did("stopped the child with SIGSTOP and continued it with SIGCONT \((ContinuousClock.now - stoppedAt).millisecondsText) later")
        ChildProcesses.collect(child, output: output, into: &record)
        record.check(child.terminationReason == .exit && child.terminationStatus == 0, "the child finished and exited 0 (status \(child.terminationStatus))")
        try session.control.send("done")
    }
}
