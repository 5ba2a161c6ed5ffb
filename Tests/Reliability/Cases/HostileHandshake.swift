import DMAIO
import ExampleSupport
import Foundation
import RDMAVerbs
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Case 6: hostile peers on the TCP-upgrade path (`dma_assoc` on a socket).
enum HostileHandshake: ReliabilityCase {
    static let name = "hostile-handshake"
    static let title = "Hostile handshakes on the TCP upgrade"
    static let summary = "Seven hostile peers try the TCP upgrade (truncated, garbage, wrong version, absurd sizes, junk, hang-up, silence); each must be refused cleanly and leave nothing behind, and an honest peer must then get through."
    static let procedure = """
        Host 0 upgrades each TCP connection it accepts with `Connection(socket:)` + `associate` \
        (`dma_assoc`, 3 s timeout). Host 1 plays a hostile peer per connection — a truncated \
        hello, 48 bytes of garbage, a wrong version, absurd credit and slot sizes, 4 KiB of junk, \
        a hello and then a close mid-handshake, silence — and then an honest peer. Each hostile \
        peer must be refused with a clear error and leave no verbs object, descriptor or area \
        byte behind; the honest peer must then carry 50 messages. The handshake parser itself is \
        fuzzed by the unit tests (figure below, from the same run).
        """

    /// The hostile peers, in the order both hosts go through them.
    enum Peer: String, CaseIterable {
        case truncated, garbage, wrongVersion = "wrong-version", absurdSizes = "absurd-sizes"
        case junk4K = "4k-junk", closesMidHandshake = "closes-mid-handshake", silent
    }

    static func host0(_ session: Session, _ record: inout CaseRecord) throws {
        let events = try EventChannel()
        let area = try DMAArea(size: 4 << 20)
        let listener = try TCPSocket.listen(on: session.address, port: session.port(0, of: name), backlog: 16)
        defer { close(listener) }
        let before = try HostState.now(device: session.device)
        let areaBefore = area.bytesInUse
        for peer in Peer.allCases {
            try session.control.send("peer", peer.rawValue)
            try waitReadable(listener, timeout: .seconds(30), what: "the \(peer.rawValue) peer")
            let socket = Int32(try TCPSocket.check("accept", accept(listener, nil, nil)))
            let start = ContinuousClock.now
            do {
                let connection = try Connection(socket: socket, events: events)
                defer { connection.close() }
                try connection.associate(area, receiveBytes: 16 << 10, slotSize: 1024, timeout: .seconds(3))
                record.check(false, "\(peer.rawValue): the handshake was accepted")
            } catch {
                let errnoText = error.errno.map { "\(Errno.name($0)) (\($0.rawValue))" } ?? "no errno"
                record.check(!error.message.isEmpty && error.errno != nil,
                             "\(peer.rawValue): refused after \((ContinuousClock.now - start).millisecondsText) with \(errnoText): \(error.message)")
            }
            close(socket)
        }
        let after = try HostState.now(device: session.device)
        record.check(after.objects == before.objects, "no verbs object left behind: \(HostState.describe(after.objects))")
        record.check(after.openDescriptors == before.openDescriptors, "no descriptor left behind: \(after.openDescriptors) open, as before")
        record.check(area.bytesInUse == areaBefore, "no area byte left behind: \(area.bytesInUse) bytes in use, as before")
        try session.control.send("peer", "honest")
        let (connection, socket) = try Endpoints.acceptSocket(
            on: listener, events: events, area: area, receiveBytes: 16 << 10, slotSize: 1024, wait: .seconds(30), timeout: .seconds(10))
        defer { close(socket) }
        let traffic = Traffic(events: events, area: area, size: 1024)
        let flow = traffic.add(connection, stream: 3)
        try traffic.run(until: { flow.account.received >= 50 }, timeout: .seconds(60), what: "the honest peer's messages")
        record.check(flow.account.received == 50 && flow.account.clean, "the honest peer afterwards: \(flow.account.summary)")
        if let fuzz = ProcessInfo.processInfo.environment["RELIABILITY_FUZZ"], !fuzz.isEmpty {
            record.figure("*parser fuzz (unit tests)", fuzz)
        }
        try session.control.expect("honest-done", timeout: .seconds(60))
        connection.close()
    }

    static func host1(_ session: Session, _ record: inout CaseRecord) throws {
        let port = session.port(0, of: name)
        for peer in Peer.allCases {
            try session.control.expect("peer", timeout: .seconds(60))
            let socket = try TCPSocket.connect(to: session.serverAddress, port: port, from: nil)
            defer { close(socket) }
            let valid = hello(from: session.address)
            switch peer {
            case .truncated: write(socket, Array(valid.prefix(20)))
            case .garbage: write(socket, (0..<48).map { _ in UInt8.random(in: 0...255) })
            case .wrongVersion:
                var bytes = valid
                bytes[5] = 2
                write(socket, bytes)
            case .absurdSizes:
                var bytes = valid
                bytes.replaceSubrange(36..<44, with: [0xFF, 0xFF, 0xFF, 0xFF, 0x80, 0x00, 0x00, 0x00])
                write(socket, bytes)
            case .junk4K: write(socket, [UInt8](repeating: 0x41, count: 4096))
            case .closesMidHandshake:
                write(socket, valid)
                _ = read(socket, 48, timeout: .seconds(10))  // host 0's hello, then hang up
            case .silent: pause(.seconds(4))
            }
            pause(.milliseconds(200))
            record.did("played the \(peer.rawValue) peer")
        }
        try session.control.expect("peer", timeout: .seconds(60))
        let events = try EventChannel()
        let area = try DMAArea(size: 4 << 20)
        let (connection, socket) = try Endpoints.connectSocket(
            to: session.serverAddress, port: port, events: events, area: area, receiveBytes: 16 << 10, slotSize: 1024, timeout: .seconds(10))
        defer { close(socket) }
        let traffic = Traffic(events: events, area: area, size: 1024)
        let flow = traffic.add(connection, stream: 3, budget: 50, window: 8)
        try traffic.run(until: { flow.completed + flow.failed == 50 || flow.broken }, timeout: .seconds(60), what: "the honest peer")
        record.check(flow.completed == 50, "as the honest peer, sent 50 messages: \(flow.completed) completed, \(flow.failed) failed")
        try session.control.send("honest-done")
        connection.close()
    }

    /// A well-formed hello (the layout of SocketHandshake, written out independently): magic
    /// "DMAS", version 1, MTU 1024, PSN, the GID ::ffff:ADDRESS, 4 credits of 1 KiB slots.
    static func hello(from address: String) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 48)
        bytes[0..<4] = [0x44, 0x4D, 0x41, 0x53]
        bytes[5] = 1
        bytes[6] = 3
        bytes[13..<16] = [0x12, 0x34, 0x56]
        bytes[26] = 0xFF
        bytes[27] = 0xFF
        bytes.replaceSubrange(28..<32, with: address.split(separator: ".").map { UInt8($0) ?? 0 })
        bytes[39] = 4
        bytes[42] = 0x04
        return bytes
    }

    static func write(_ socket: Int32, _ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    static func read(_ socket: Int32, _ count: Int, timeout: Duration) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        guard (try? waitReadable(socket, timeout: timeout, what: "host 0")) != nil else { return [] }
        let n = bytes.withUnsafeMutableBytes { recv(socket, $0.baseAddress, count, Int32(MSG_WAITALL)) }
        return Array(bytes.prefix(max(0, n)))
    }
}

extension Errno {
    static func name(_ errno: Errno) -> String {
        switch errno {
        case .protocolError: "EPROTO"
        case .connectionReset: "ECONNRESET"
        case .timedOut: "ETIMEDOUT"
        case .noBufferSpace: "ENOBUFS"
        default: "errno"
        }
    }
}
