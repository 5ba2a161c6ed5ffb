import ExampleSupport
import Foundation
import RDMAVerbs
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The two hosts' side channel: lines of text over an ordinary TCP connection, on which host 0
/// says which case runs next and both sides say when they are ready, what they saw, and when
/// they are done. It crosses the same Ethernet segment as the RDMA traffic, so it stalls while
/// a case has the link down; TCP carries the lines once the link is back.
final class Control {
    private let socket: Int32
    private var buffer: [UInt8] = []
    /// Whether host 0 said "finished" (the end of a case) since ``startCase()``.
    private(set) var finished = false

    /// Forgets the last case's "finished".
    func startCase() { finished = false }

    private init(socket: Int32) { self.socket = socket }
    deinit { close(socket) }

    /// Host 0: waits for host 1 to connect.
    static func accept(on address: String, port: UInt16, timeout: Duration) throws -> Control {
        let listener = try TCPSocket.listen(on: address, port: port)
        defer { close(listener) }
        try waitReadable(listener, timeout: timeout, what: "host 1's control connection")
        return Control(socket: Int32(try TCPSocket.check("accept", Glibc.accept(listener, nil, nil))))
    }

    /// Host 1: connects to host 0, retrying while it starts up.
    static func connect(to address: String, port: UInt16, timeout: Duration) throws -> Control {
        let deadline = ContinuousClock.now + timeout
        while true {
            do {
                return Control(socket: try TCPSocket.connect(to: address, port: port, from: nil))
            } catch {
                if ContinuousClock.now > deadline { throw error }
                Thread.sleep(forTimeInterval: 0.2)
            }
        }
    }

    /// Sends one line.
    func send(_ words: String...) throws {
        var line = Array((words.joined(separator: " ") + "\n").utf8)
        var sent = 0
        while sent < line.count {
            let n = line.withUnsafeMutableBytes { Glibc.send(socket, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            _ = try TCPSocket.check("send", n)
            sent += n
        }
        line.removeAll()
    }

    /// The next line, waiting up to `timeout`.
    func receive(timeout: Duration) throws -> String {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let line = takeLine() { return line }
            let left = deadline - ContinuousClock.now
            guard left > .zero else { throw ReliabilityError("no word from the other host within \(timeout)") }
            try waitReadable(socket, timeout: left, what: "the other host")
            try fill()
        }
    }

    /// The next line if one has arrived, without waiting.
    func poll() throws -> String? {
        if let line = takeLine() { return line }
        guard try isReadable(socket, within: .zero) else { return nil }
        try fill()
        return takeLine()
    }

    /// Waits for a line starting with `word`; returns the words after it. Other lines are an
    /// error; "failed ..." says the other host's half of the case failed.
    @discardableResult
    func expect(_ word: String, timeout: Duration) throws -> [String] {
        let line = try receive(timeout: timeout)
        let words = line.split(separator: " ").map(String.init)
        if words.first == "failed" && word != "failed" { throw ReliabilityError("the other host's half failed: \(words.dropFirst().joined(separator: " "))") }
        guard words.first == word else { throw ReliabilityError("expected '\(word)' from the other host, got '\(line)'") }
        return Array(words.dropFirst())
    }

    private func fill() throws {
        var chunk = [UInt8](repeating: 0, count: 65536)
        let n = chunk.withUnsafeMutableBytes { recv(socket, $0.baseAddress, $0.count, 0) }
        if n < 0 && errno == EINTR { return }
        guard n > 0 else { throw ReliabilityError(n == 0 ? "the other host closed the control connection" : "control connection: errno \(errno)") }
        buffer += chunk[..<n]
    }

    private func takeLine() -> String? {
        guard let end = buffer.firstIndex(of: UInt8(ascii: "\n")) else { return nil }
        let line = String(decoding: buffer[..<end], as: UTF8.self)
        buffer.removeSubrange(...end)
        if line == "finished" { finished = true }
        return line
    }
}

/// Waits until `descriptor` is readable; throws after `timeout`.
func waitReadable(_ descriptor: Int32, timeout: Duration, what: String) throws {
    guard try isReadable(descriptor, within: timeout) else { throw ReliabilityError("nothing from \(what) within \(timeout)") }
}

/// Whether `descriptor` becomes readable within `timeout`, through RDMAVerbs' `waitReadable`
/// (`poll`); a signal (a child's SIGCHLD) only restarts the wait.
func isReadable(_ descriptor: Int32, within timeout: Duration) throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while true {
        do throws(RDMAError) {
            return try RDMAVerbs.waitReadable(descriptor, timeout: max(.zero, deadline - .now))
        } catch {
            guard error.errno == .interrupted else { throw error }
        }
    }
}

/// A failure of the harness or of a case's expectation, with what went wrong.
struct ReliabilityError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
