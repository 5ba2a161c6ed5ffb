// pingpong: a reliable-connected ping-pong over rdma_cm, in the manner of ibv_rc_pingpong.
//
//   server:  pingpong [-p PORT] [-d DEV] [-s SIZE] [-n ITERS] [-e] [-c]
//   client:  pingpong [same options] SERVER
//
// Both sides must use the same -s and -n. Addresses are IP addresses: rdma_cm finds the device
// and the RoCE GID that go with them.

import ArgumentParser
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

@main
struct PingPong: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pingpong",
        abstract: "Reliable-connected ping-pong over RDMA (rdma_cm), like ibv_rc_pingpong.",
        discussion: """
            Start the server first (no SERVER argument), then the client with the server's IP \
            address. Both print rc_pingpong's two summary lines. Use -c to check every byte.
            Example on soft-RoCE:  pingpong -c &  pingpong -c 10.99.0.1
            """)

    @Argument(help: "The server's IP address; without it, run as the server.")
    var server: String?

    @Option(name: [.short, .customLong("port")], help: "Port to listen on or connect to.")
    var port: UInt16 = 18515

    @Option(name: [.short, .customLong("ib-dev")], help: "Use this RDMA device only (checked against the one rdma_cm picks from the address).")
    var device: String?

    @Option(name: [.short, .customLong("bind")], help: "Server: the local address to listen on (default: all).")
    var bindAddress: String = "0.0.0.0"

    @Option(name: [.short, .customLong("size")], help: "Message size in bytes (0 ... 1 GiB).")
    var size: Int = 4096

    @Option(name: [.customShort("n"), .customLong("iters")], help: "Number of round trips.")
    var iterations: Int = 1000

    @Flag(name: [.short, .customLong("events")], help: "Sleep on the completion channel instead of busy-polling.")
    var events = false

    @Flag(name: [.short, .customLong("chk")], help: "Validate the content of every received message.")
    var check = false

    @Option(name: .customLong("timeout"), help: "Seconds to wait for the peer when connecting.")
    var timeoutSeconds: Int = 5

    mutating func validate() throws {
        guard (0...(1 << 30)).contains(size) else { throw ValidationError("-s/--size must be between 0 and 1073741824, not \(size)") }
        guard iterations > 0 else { throw ValidationError("-n/--iters must be positive, not \(iterations)") }
        guard timeoutSeconds > 0 else { throw ValidationError("--timeout must be positive") }
    }

    func run() throws {
        do {
            let endpoint = try server.map { try connect(to: $0) } ?? accept()
            try runPingPong(endpoint)
        } catch let error as RDMAError {
            printError("pingpong: \(error)")
            throw ExitCode(1)
        }
    }

    private var timeout: Duration { .seconds(timeoutSeconds) }

    /// Client: resolve the server's address, make the queue pair, connect.
    private func connect(to host: String) throws(RDMAError) -> Endpoint {
        let address = try SocketAddress(host: host, port: port)
        let channel = try ConnectionEventChannel()
        let id = try ConnectionID(channel: channel)
        try id.resolve(to: address, timeout: timeout)
        let endpoint = try Endpoint(id: id, size: size, events: events, device: device)
        _ = try id.connect(timeout: timeout)
        print("  connected to \(address) over \(endpoint.id.context!.deviceName)")
        return endpoint
    }

    /// Server: listen, take one connection request, accept it on a channel of its own.
    private func accept() throws(RDMAError) -> Endpoint {
        let channel = try ConnectionEventChannel()
        let listener = try ConnectionID(channel: channel)
        try listener.bind(to: try SocketAddress(host: bindAddress, port: port))
        try listener.listen(backlog: 1)
        // A listener bound to one address has its device now: register the memory before any
        // peer arrives, so that limits show at once. A wildcard listener learns the device from
        // the request.
        var memory: Endpoint.Memory? = nil
        if let context = listener.context { memory = try Endpoint.Memory(context: context, size: size) }
        print("  listening on \(bindAddress):\(port)")
        fflush(nil)
        let request = try channel.expectEvent(.connectRequest, timeout: nil, while: "waiting for a client").request!
        try request.migrate(to: try ConnectionEventChannel())
        let endpoint = try Endpoint(id: request, size: size, events: events, device: device, memory: memory)
        _ = try request.accept(timeout: timeout)
        print("  accepted \(request.peerAddress.map(String.init(describing:)) ?? "a client") over \(request.context!.deviceName)")
        return endpoint
    }

    private func runPingPong(_ endpoint: Endpoint) throws(RDMAError) {
        let isClient = server != nil
        let clock = ContinuousClock()
        let start = clock.now
        for iteration in 0..<iterations {
            if isClient {
                try endpoint.send(sequence: UInt64(iteration))
                try endpoint.receive(sequence: UInt64(iteration), check: check)
            } else {
                try endpoint.receive(sequence: UInt64(iteration), check: check)
                try endpoint.send(sequence: UInt64(iteration))
            }
        }
        let elapsed = clock.now - start
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let bytes = size * iterations * 2
        print("\(bytes) bytes in \(format(seconds)) seconds = \(format(Double(bytes) * 8 / seconds / 1e6)) Mbit/sec")
        print("\(iterations) iters in \(format(seconds)) seconds = \(format(seconds * 1e6 / Double(iterations))) usec/iter")
        if check { print("  content of all \(iterations) messages checked: OK") }
        try? endpoint.id.disconnect()
    }

    private func format(_ value: Double) -> String {
        let hundredths = (value * 100).rounded()
        let whole = Int(hundredths / 100)
        let fraction = Int(abs(hundredths).truncatingRemainder(dividingBy: 100))
        return "\(whole).\(fraction < 10 ? "0" : "")\(fraction)"
    }
}

/// Writes a line to standard error, unbuffered.
func printError(_ line: String) {
    var text = line + "\n"
    text.withUTF8 { bytes in _ = write(2, bytes.baseAddress, bytes.count) }
}
