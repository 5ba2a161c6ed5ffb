import DMAIO
import ExampleSupport
import Foundation
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

/// Host 1's link goes down for 5 s mid-transfer and comes back: the connection resumes and the
/// transfer completes with nothing lost (docs/resume.md).
enum LinkFlap: ReliabilityCase {
    static let name = "link-flap"
    static let title = "Link down for 5 s mid-transfer"
    static let summary = "Host 1 takes its NIC down for 5 s while both hosts stream to each other; the connection must resume and both transfers complete with nothing lost, duplicated, reordered or corrupted."
    static let procedure = """
        Both hosts stream \(messages) stamped 1 KiB messages to each other over one connection \
        made by `dma_assoc` on a TCP socket (64 slots granted each way, 8 messages in flight). \
        Mid-transfer, host 1 runs `ip link set eth0 down`, and 5 s later `up` (putting host 0's \
        neighbour entry back and waiting for its port to be ACTIVE again). The queue pairs fail \
        after their retries (7 × 268 ms ≈ 1.9 s; a side with nothing in flight learns it from \
        the keepalive) and the connection resumes on new ones once the TCP socket carries the \
        resume again. Every message must arrive once, in order, every byte intact, every send \
        must be reported sent once and none failed, and the connection must never be reported \
        disconnected; each host reports how long it was interrupted.
        """
    static let messages = 20_000
    static let downFor: Duration = .seconds(5)

    static func host0(_ session: Session, _ record: inout CaseRecord) throws {
        let events = try EventChannel()
        let area = try DMAArea(size: 8 << 20)
        let listener = try TCPSocket.listen(on: session.address, port: session.port(0, of: name))
        defer { close(listener) }
        try session.control.send("listening")
        let (connection, socket) = try Endpoints.acceptSocket(on: listener, events: events, area: area, receiveBytes: 64 << 10, slotSize: 1024)
        defer {
            connection.close()
            close(socket)
        }
        let traffic = Traffic(events: events, area: area, size: 1024)
        let flow = traffic.add(connection, stream: 0, budget: messages, window: 8)
        try traffic.run(until: { flow.account.received >= 200 && flow.completed >= 200 }, timeout: .seconds(120), what: "streaming both ways")
        try session.control.send("cut")
        record.did("streamed both ways (\(flow.completed) sent, \(flow.account.received) received), then asked host 1 to take its link down for \(downFor)")
        try finish(traffic, flow, &record)
        try session.control.expect("done", timeout: .seconds(120))
    }

    static func host1(_ session: Session, _ record: inout CaseRecord) throws {
        try session.control.expect("listening", timeout: .seconds(60))
        let neighbour = try runTool("ip", ["neigh", "show", session.peerAddress, "dev", session.netdev])
        let events = try EventChannel()
        let area = try DMAArea(size: 8 << 20)
        let (connection, socket) = try Endpoints.connectSocket(to: session.serverAddress, port: session.port(0, of: name), events: events, area: area,
                                                               receiveBytes: 64 << 10, slotSize: 1024)
        defer {
            connection.close()
            close(socket)
        }
        let traffic = Traffic(events: events, area: area, size: 1024)
        let flow = traffic.add(connection, stream: 1, budget: messages, window: 8)
        let deadline = ContinuousClock.now + .seconds(180)
        while try session.control.poll() != "cut" {
            _ = traffic.step()
            guard ContinuousClock.now < deadline else { throw ReliabilityError("host 0 never asked for the cut") }
        }
        try runTool("ip", ["link", "set", "dev", session.netdev, "down"])
        let downAt = ContinuousClock.now
        record.did("took \(session.netdev) down mid-transfer (\(flow.completed) sent, \(flow.account.received) received)")
        // The traffic goes on (into the queue) while the link is down.
        while ContinuousClock.now - downAt < downFor {
            if !traffic.step() { pause(.milliseconds(1)) }
        }
        try LinkDown.bringLinkUp(session, neighbour: neighbour, downAt: downAt, &record)
        try finish(traffic, flow, &record)
        try session.control.send("done")
    }

    /// Runs the transfer to its end and records what each host must show.
    static func finish(_ traffic: Traffic, _ flow: Traffic.Flow, _ record: inout CaseRecord) throws {
        try traffic.run(until: { flow.broken || flow.account.received >= messages && flow.completed >= messages },
                        timeout: .seconds(240), what: "completing the transfer across the link's flap")
        record.check(!flow.broken, "the connection was never reported broken: \(flow.errors.isEmpty ? "no error" : flow.errors.prefix(3).joined(separator: "; "))")
        record.check(flow.account.received == messages && flow.account.clean,
                     "all \(messages) messages arrived once, in order, intact: \(flow.account.summary)")
        record.check(flow.completed == messages && flow.failed == 0, "every send was reported sent once: \(flow.completed) sent, \(flow.failed) failed")
        let durations = flow.interruptedFor
        record.check(!flow.interruptions.isEmpty && durations.count == flow.interruptions.count,
                     "the connection was interrupted \(flow.interruptions.count) time(s) and resumed \(flow.resumptions.count) time(s)")
        record.figure("*interrupted for", durations.isEmpty ? "never" : durations.map(\.millisecondsText).joined(separator: ", "))
    }
}
