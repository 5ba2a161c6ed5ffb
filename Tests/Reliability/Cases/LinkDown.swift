import DMAIO
import ExampleSupport
import Foundation
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

/// Case 2: host 1's link goes down mid-transfer and stays down past the connection's resume
/// deadline, then comes back.
enum LinkDown: ReliabilityCase {
    static let name = "link-down"
    static let title = "Link down past the resume deadline"
    static let summary = "Host 1 takes its NIC down while both hosts stream to each other and keeps it down past the connection's resume deadline; both must see the connection end through events within the deadline and a documented margin, and after the link is back a new connection must carry checked data."
    static let procedure = """
        Both hosts stream 1 KiB messages to each other over one connection made by `dma_assoc` \
        on a TCP socket (64 slots granted each way, 8 messages in flight), whose resume deadline \
        is set to \(resumeDeadline) (`Connection.resumeDeadline`). Mid-transfer, host 1 runs `ip \
        link set eth0 down`. The queue pairs fail after their retries (7 × 268 ms ≈ 1.9 s; host 0 \
        may have nothing in flight then, its sends waiting for credits host 1 can no longer \
        return: it learns of the cut from the keepalive, a zero-length RDMA write after 2 s of \
        quiet, so within 2 × 2 s + 1.9 s) and the connection is interrupted; its resume cannot \
        cross the link, so each side gives it up once the deadline passed, at the next keepalive \
        sweep (2 s): `disconnected`, the sends in flight failed. The bound is the deadline plus \
        that detection (≈ 6 s) and one sweep (2 s), with 4 s to spare on a loaded emulator: \
        \(detectionBound) after the cut. Then host 1 brings the link up again, and a new \
        connection carries 500 messages, content checked. (The link-flap case is the link that \
        comes back in time. The connections are not made through rdma_cm here: with kernel 6.1's \
        rxe, an rdma_cm connection torn down while the link is down leaves rdma_cm on that host \
        unable to complete any later connection — `rping` shows the same — which would fail the \
        cases after this one.)
        """
    static let resumeDeadline: Duration = .seconds(10)
    static let detectionBound: Duration = resumeDeadline + .seconds(12)

    static func host0(_ session: Session, _ record: inout CaseRecord) throws {
        let events = try EventChannel()
        let area = try DMAArea(size: 8 << 20)
        let listener = try TCPSocket.listen(on: session.address, port: session.port(0, of: name))
        defer { close(listener) }
        try session.control.send("listening")
        let (connection, socket) = try Endpoints.acceptSocket(on: listener, events: events, area: area, receiveBytes: 64 << 10, slotSize: 1024)
        defer { close(socket) }
        connection.resumeDeadline = resumeDeadline
        let traffic = Traffic(events: events, area: area, size: 1024)
        let flow = traffic.add(connection, stream: 0, budget: .max, window: 8)
        try traffic.run(until: { flow.account.received >= 200 && flow.completed >= 200 }, timeout: .seconds(120), what: "streaming both ways")
        try session.control.send("cut")
        let cutAsked = ContinuousClock.now
        record.did("streamed both ways (\(flow.completed) sent, \(flow.account.received) received), then asked host 1 to take its link down")
        do {
            try traffic.run(until: { flow.broken }, timeout: detectionBound + .seconds(30), what: "waiting for the cut to surface")
        } catch {
            record.log("device counters: " + ["sent_pkts", "rcvd_pkts", "completer_retry_err", "retry_exceeded_err", "send_err"].map { "\($0) \(HostState.counter($0, device: session.device))" }.joined(separator: ", "))
            throw error
        }
        let detection = flow.firstError! - cutAsked
        record.check(detection <= detectionBound, "the connection ended through events \(detection.millisecondsText) after the cut was asked for (bound \(detectionBound)), interrupted \(flow.interruptions.count) time(s) first: \(flow.errors.prefix(3).joined(separator: "; "))")
        record.figure("*failure seen after", detection.millisecondsText)
        record.check(flow.account.clean, "what arrived before the cut was intact and in order: \(flow.account.summary)")
        connection.close()
        try session.control.expect("up", timeout: .seconds(120))
        let (fresh, freshSocket) = try Endpoints.acceptSocket(on: listener, events: events, area: area, receiveBytes: 16 << 10, slotSize: 1024)
        defer { close(freshSocket) }
        let again = Traffic(events: events, area: area, size: 1024)
        let flow2 = again.add(fresh, stream: 1)
        try again.run(until: { flow2.account.received >= 500 }, timeout: .seconds(120), what: "the new connection")
        record.check(flow2.account.received == 500 && flow2.account.clean, "after the link came back, a new connection carried \(flow2.account.summary)")
        try session.control.expect("sent", timeout: .seconds(60))
        fresh.close()
    }

    static func host1(_ session: Session, _ record: inout CaseRecord) throws {
        let port = session.port(0, of: name)
        try session.control.expect("listening", timeout: .seconds(60))
        let neighbour = try runTool("ip", ["neigh", "show", session.peerAddress, "dev", session.netdev])
        let downAt = try cut(session, port: port, &record)
        pause(max(.zero, .seconds(5) - (ContinuousClock.now - downAt)))
        try bringLinkUp(session, neighbour: neighbour, downAt: downAt, &record)
        try session.control.send("up")
        let events = try EventChannel()
        let area = try DMAArea(size: 8 << 20)
        let (fresh, socket) = try Endpoints.connectSocket(to: session.serverAddress, port: port, events: events, area: area, receiveBytes: 16 << 10, slotSize: 1024)
        defer { close(socket) }
        let again = Traffic(events: events, area: area, size: 1024)
        let flow2 = again.add(fresh, stream: 1, budget: 500, window: 8)
        try again.run(until: { flow2.completed + flow2.failed == 500 || flow2.broken }, timeout: .seconds(120), what: "the new connection")
        record.check(flow2.completed == 500 && flow2.failed == 0, "the new connection sent 500 messages: \(flow2.completed) completed, \(flow2.failed) failed")
        try session.control.send("sent")
        fresh.close()
    }

    /// Streams both ways until host 0 asks for the cut, takes the link down, waits for the
    /// failure to surface and closes everything; when the link went down.
    static func cut(_ session: Session, port: UInt16, _ record: inout CaseRecord) throws -> ContinuousClock.Instant {
        let events = try EventChannel()
        let area = try DMAArea(size: 8 << 20)
        let (connection, socket) = try Endpoints.connectSocket(to: session.serverAddress, port: port, events: events, area: area, receiveBytes: 64 << 10, slotSize: 1024)
        defer {
            connection.close()
            close(socket)
        }
        connection.resumeDeadline = resumeDeadline
        let traffic = Traffic(events: events, area: area, size: 1024)
        let flow = traffic.add(connection, stream: 1, budget: .max, window: 8)
        let deadline = ContinuousClock.now + .seconds(180)
        while try session.control.poll() != "cut" {
            _ = traffic.step()
            guard ContinuousClock.now < deadline else { throw ReliabilityError("host 0 never asked for the cut") }
        }
        try runTool("ip", ["link", "set", "dev", session.netdev, "down"])
        let downAt = ContinuousClock.now
        record.did("took \(session.netdev) down mid-transfer (\(flow.completed) sent, \(flow.account.received) received)")
        try traffic.run(until: { flow.broken }, timeout: detectionBound + .seconds(30), what: "waiting for the cut to surface")
        let detection = flow.firstError! - downAt
        record.check(detection <= detectionBound, "the connection ended through events \(detection.millisecondsText) after the link went down (bound \(detectionBound)), interrupted \(flow.interruptions.count) time(s) first: \(flow.errors.prefix(3).joined(separator: "; "))")
        record.figure("*failure seen after", detection.millisecondsText)
        record.check(flow.account.clean, "what arrived before the cut was intact and in order: \(flow.account.summary)")
        return downAt
    }

    /// Brings the link up again, puts host 0's neighbour entry back as rxe-setup made it (it went
    /// with the link; `neighbour` is `ip neigh show` from before) and waits for the port.
    static func bringLinkUp(_ session: Session, neighbour: String, downAt: ContinuousClock.Instant, _ record: inout CaseRecord) throws {
        try runTool("ip", ["link", "set", "dev", session.netdev, "up"])
        if let lladdr = neighbour.split(separator: " ").drop(while: { $0 != "lladdr" }).dropFirst().first {
            try runTool("ip", ["neigh", "replace", session.peerAddress, "lladdr", String(lladdr), "dev", session.netdev, "nud", "permanent"])
        }
        let active = try waitForActivePort(session, timeout: .seconds(30))
        record.did("brought \(session.netdev) up again after \((ContinuousClock.now - downAt).millisecondsText), \(session.device) ACTIVE again after \(active.millisecondsText)")
    }

    /// Waits until rxe0's port is ACTIVE and has this host's IPv4 GID again; how long it took.
    static func waitForActivePort(_ session: Session, timeout: Duration) throws -> Duration {
        let start = ContinuousClock.now
        while ContinuousClock.now - start < timeout {
            let state = try? String(contentsOfFile: "/sys/class/infiniband/\(session.device)/ports/1/state", encoding: .utf8)
            if state?.contains("ACTIVE") == true, hasIPv4GID(session) {
                return ContinuousClock.now - start
            }
            pause(.milliseconds(100))
        }
        throw ReliabilityError("\(session.device) did not come back ACTIVE with its GID within \(timeout)")
    }

    /// Whether the port's GID table has ::ffff:ADDRESS (sysfs, first 16 entries).
    static func hasIPv4GID(_ session: Session) -> Bool {
        let octets = session.address.split(separator: ".").compactMap { UInt8($0) }
        guard octets.count == 4 else { return false }
        let suffix = String(format: "ffff:%02x%02x:%02x%02x", octets[0], octets[1], octets[2], octets[3])
        return (0..<16).contains { index in
            let gid = try? String(contentsOfFile: "/sys/class/infiniband/\(session.device)/ports/1/gids/\(index)", encoding: .utf8)
            return gid?.trimmingCharacters(in: .whitespacesAndNewlines).hasSuffix(suffix) == true
        }
    }
}
