import DMAIO
import Foundation
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

/// Case 1: a peer process is killed with SIGKILL mid-stream.
enum PeerKilled: ReliabilityCase {
    static let name = "peer-killed"
    static let title = "Peer killed mid-stream"
    static let summary = "Host 1's child process, streaming to host 0 beside host 1's main process, is killed with SIGKILL; host 0 must see the disconnect, free its verbs objects and keep serving the other connection."
    static let procedure = """
        Host 1 streams 1 KiB messages to host 0 over two connections that share host 0's area and \
        event channel: one from its main process, one from a child process. Once both carried 300 \
        messages, host 1 kills the child with SIGKILL. Host 0 must see the child's connection end \
        within 5 s (the child's kernel closes it at once; a silent peer would take the queue pair's \
        ACK timeout 2^16 × 4.096 µs × 7 tries ≈ 1.9 s), free the connection's verbs objects \
        (`rdma resource show`), and keep receiving on the other connection.
        """
    static let detectionBound: Duration = .seconds(5)

    static func host0(_ session: Session, _ record: inout CaseRecord) throws {
        let events = try EventChannel()
        let area = try DMAArea(size: 8 << 20)
        let baseline = try HostState.objects(on: session.device)
        var listener: Listener? = try Listener(on: "\(session.address):\(session.port(0, of: name))", events: events)
        try session.control.send("listening")
        var survivor: Connection? = try Endpoints.accept(1, on: listener!, area: area, receiveBytes: 16 << 10, slotSize: 1024)[0]
        try session.control.send("start-child")
        var victim: Connection? = try Endpoints.accept(1, on: listener!, area: area, receiveBytes: 16 << 10, slotSize: 1024)[0]
        record.did("accepted two connections from host 1 (its main process and a child), sharing one area and one event channel")
        let traffic = Traffic(events: events, area: area, size: 1024)
        var steady: Traffic.Flow! = traffic.add(survivor!, stream: 0)
        var doomed: Traffic.Flow! = traffic.add(victim!, stream: 1)
        try traffic.run(until: { steady.account.received >= 300 && doomed.account.received >= 300 }, timeout: .seconds(120), what: "streaming before the kill")
        let before = try HostState.objects(on: session.device)
        try session.control.send("kill")
        let killAsked = ContinuousClock.now
        record.did("asked host 1 to SIGKILL the child after \(doomed.account.received) of its messages arrived")
        try traffic.run(until: { doomed.broken }, timeout: .seconds(30), what: "waiting for the killed peer's connection to end")
        let detection = doomed.firstError! - killAsked
        try session.control.expect("killed", timeout: .seconds(30))
        record.check(doomed.disconnectedAt != nil, "the killed peer's connection reported a disconnect event (first error: \(doomed.errors.first ?? "none"))")
        record.check(detection <= detectionBound, "it came \(detection.millisecondsText) after the kill was asked for (bound \(detectionBound))")
        record.figure("*disconnect seen after", detection.millisecondsText)
        record.check(doomed.account.clean, "the killed peer's messages that arrived were intact and in order: \(doomed.account.summary)")
        // Closed, and no longer referenced: its verbs objects go (a closed connection keeps them
        // while something still holds it or a buffer it received).
        victim!.close()
        traffic.remove(doomed)
        victim = nil
        doomed = nil
        let after = try HostState.objects(on: session.device)
        record.check(after["qp"] == before["qp"].map { $0 - 1 } && after["cm_id"] == before["cm_id"].map { $0 - 1 }
                     && after["mr"] == before["mr"] && after["cq"] == before["cq"],
                     "closing it freed its queue pair and rdma_cm id: \(HostState.describe(before)) → \(HostState.describe(after))")
        let mark = steady.account.received
        try traffic.run(until: { steady.account.received >= mark + 300 }, timeout: .seconds(60), what: "the other connection after the kill")
        record.check(!steady.broken && steady.account.clean,
                     "the other connection kept streaming: \(steady.account.received - mark) more messages; in all \(steady.account.summary)")
        try session.control.send("stop")
        try traffic.run(until: { steady.disconnectedAt != nil }, timeout: .seconds(30), what: "host 1 closing the other connection")
        survivor!.close()
        traffic.remove(steady)
        survivor = nil
        steady = nil
        listener = nil
        let end = try HostState.objects(on: session.device)
        record.check(end == baseline, "after both connections and the listener closed, the device holds what it held before the case: \(HostState.describe(end))")
        _ = (listener, survivor, victim, steady, doomed)
    }

    static func host1(_ session: Session, _ record: inout CaseRecord) throws {
        let events = try EventChannel()
        let area = try DMAArea(size: 8 << 20)
        let port = session.port(0, of: name)
        try session.control.expect("listening", timeout: .seconds(60))
        let connection = try Endpoints.connect(to: session.serverAddress, port: port, events: events, area: area, receiveBytes: 16 << 10, slotSize: 1024)
        try session.control.expect("start-child", timeout: .seconds(60))
        let child = Process()
        child.executableURL = URL(fileURLWithPath: session.executable)
        child.arguments = ["child-stream", session.serverAddress, "\(port)", "1"]
        try child.run()
        record.did("started a child process (pid \(child.processIdentifier)) that connects and streams; streamed from the main process too")
        let traffic = Traffic(events: events, area: area, size: 1024)
        let flow = traffic.add(connection, stream: 0, budget: .max, window: 8)
        let deadline = ContinuousClock.now + .seconds(300)
        while ContinuousClock.now < deadline {
            _ = traffic.step()
            guard let line = try session.control.poll() else { continue }
            if line == "kill" {
                kill(child.processIdentifier, SIGKILL)
                child.waitUntilExit()
                record.did("killed the child with SIGKILL")
                record.check(child.terminationReason == .uncaughtSignal && child.terminationStatus == SIGKILL,
                             "the child died of signal \(child.terminationStatus)")
                try session.control.send("killed")
                let left = try rdma(["-j", "resource", "show", "qp"]).contains("\"pid\":\(child.processIdentifier),")
                record.check(!left, "the kernel released the child's queue pair on this host")
            } else if line == "stop" {
                flow.budget = 0
                try traffic.run(until: { flow.completed + flow.failed == flow.sent }, timeout: .seconds(30), what: "the last sends")
                record.check(flow.failed == 0 && !flow.broken, "the main process's \(flow.sent) messages all completed: \(flow.errors)")
                connection.close()
                return
            } else {
                throw ReliabilityError("unexpected '\(line)' from host 0")
            }
        }
        throw ReliabilityError("host 0 did not finish the case within 300 s")
    }
}
