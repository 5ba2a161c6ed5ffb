import DMAIO
import Foundation
import RDMAVerbs

/// Case 5: 64 connections on one area and one event channel, all streaming at once.
enum SixtyFourConnections: ReliabilityCase {
    static let name = "64-connections"
    static let title = "64 connections, one area, one event channel"
    static let summary = "64 connections, sharing one area and one event channel on each host, stream 300 messages each at once; every message must arrive in order and intact."
    static let procedure = """
        Host 1 opens 64 connections to host 0; on each host all 64 share one area and one event \
        channel. Host 1 then streams 300 messages of 1 KiB on every connection at once (4 in \
        flight each). Host 0 must receive all 19,200, each connection's in order and intact.
        """
    static let connections = 64
    static let perConnection = 300

    static func host0(_ session: Session, _ record: inout CaseRecord) throws {
        let events = try EventChannel()
        let area = try DMAArea(size: 16 << 20)
        let listener = try Listener(on: "\(session.address):\(session.port(0, of: name))", events: events, backlog: 128)
        try session.control.send("listening")
        let accepted = try Endpoints.accept(connections, on: listener, area: area, receiveBytes: 4 << 10, slotSize: 1024)
        record.did("accepted \(accepted.count) connections on one listener, one area (16 MiB) and one event channel")
        let traffic = Traffic(events: events, area: area, size: 1024)
        let flows = accepted.enumerated().map { traffic.add($1, stream: UInt32($0)) }
        let start = ContinuousClock.now
        try traffic.run(until: { flows.allSatisfy { $0.account.received >= perConnection } }, timeout: .seconds(600), what: "64 streams")
        let elapsed = ContinuousClock.now - start
        let total = flows.reduce(0) { $0 + $1.account.received }
        let clean = flows.filter { $0.account.clean && $0.account.received == perConnection }.count
        let streams = Set(flows.compactMap(\.account.stream)).count
        record.check(clean == connections, "\(clean) of \(connections) connections delivered all \(perConnection) messages in order and intact (\(total) in all)")
        record.check(streams == connections, "each connection carried one sender's stream: \(streams) distinct streams")
        record.check(flows.allSatisfy { !$0.broken }, "no connection failed: \(flows.flatMap(\.errors).prefix(3))")
        record.figure("*messages", "\(total) in \(elapsed.millisecondsText)")
        try session.control.expect("sent", timeout: .seconds(60))
        accepted.forEach { $0.close() }
    }

    static func host1(_ session: Session, _ record: inout CaseRecord) throws {
        let events = try EventChannel()
        let area = try DMAArea(size: 16 << 20)
        try session.control.expect("listening", timeout: .seconds(60))
        let start = ContinuousClock.now
        let opened = try (0..<connections).map { _ in
            try Endpoints.connect(to: session.serverAddress, port: session.port(0, of: name), events: events, area: area, receiveBytes: 4 << 10, slotSize: 1024)
        }
        record.did("opened \(opened.count) connections in \((ContinuousClock.now - start).millisecondsText), sharing one area and one event channel")
        let traffic = Traffic(events: events, area: area, size: 1024)
        let flows = opened.enumerated().map { traffic.add($1, stream: UInt32($0), budget: perConnection, window: 4) }
        try traffic.run(until: { flows.allSatisfy { $0.completed + $0.failed == perConnection || $0.broken } }, timeout: .seconds(600), what: "64 streams")
        let completed = flows.reduce(0) { $0 + $1.completed }
        record.check(completed == connections * perConnection && flows.allSatisfy { $0.failed == 0 && !$0.broken },
                     "all \(connections * perConnection) sends completed: \(completed), errors \(flows.flatMap(\.errors).prefix(3))")
        try session.control.send("sent")
        opened.forEach { $0.close() }
    }
}
