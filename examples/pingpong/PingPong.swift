// pingpong: ibv_rc_pingpong's workload on the proposal's API (DMAIO): a client and a server
// bounce a message back and forth; each round trip is one iteration.
//
//   server:  pingpong [-p PORT] [-d DEV] [-s SIZE] [-n ITERS] [-e] [-c] [-b ADDR] [-g GIDX]
//   client:  pingpong [same options] SERVER
//
// Both sides must use the same -s and -n. Addresses are IP addresses: rdma_cm finds the device
// and the RoCE GID that go with them; -b picks the local address, and so the device. With -g,
// the peers connect as ibv_rc_pingpong does instead: over a TCP socket on the same port, whose
// connection dma_assoc upgrades (queue-pair numbers, PSNs and GIDs exchanged over it), sending
// from GID index GIDX.
//
// --against-verbs measures what the library costs: round trips alternate, in blocks of 64, between
// the library and bare verbs calls (ibv_post_send, ibv_poll_cq, ibv_post_recv, as
// ibv_rc_pingpong makes them) on the same connection, and the two are compared block by block.
// --verbs-only makes every round trip with those bare verbs calls, over the connection the library
// made: the reference run that tells what the library's path costs from what the rest of the
// process (its connection, its loop, its clock reads) costs next to ibv_rc_pingpong.

import ArgumentParser
import DMAIO
import ExampleSupport
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

@main
struct PingPong: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pingpong",
        abstract: "Reliable-connected ping-pong over RDMA on the zero-copy API, like ibv_rc_pingpong.",
        discussion: """
            Start the server first (no SERVER argument), then the client with the server's IP \
            address. Both print rc_pingpong's two summary lines and the round-trip latency \
            percentiles. Use -c to check every byte, -e to sleep on the event channel.
            Example on soft-RoCE:  pingpong -c &  pingpong -c 10.99.0.1
            """)

    @Argument(help: "The server's IP address; without it, run as the server.")
    var server: String?

    @Option(name: [.short, .customLong("port")], help: "Port to listen on or connect to.")
    var port: UInt16 = 18515

    @Option(name: [.short, .customLong("ib-dev")], help: "The RDMA device (default: the one that owns -b's address, else the first).")
    var device: String?

    @Option(name: [.short, .customLong("bind")], help: "The local address: the server listens on it (default: all), the client leaves from it (default: as routed).")
    var bindAddress: String?

    @Option(name: [.short, .customLong("size")], help: "Message size in bytes (1 ... 1 GiB).")
    var size: Int = 4096

    @Option(name: [.customShort("n"), .customLong("iters")], help: "Number of round trips.")
    var iterations: Int = 1000

    @Option(name: [.short, .customLong("gid-idx")], help: "Send from this local GID index, connecting over a TCP socket as ibv_rc_pingpong does (default: rdma_cm picks the GID of the address).")
    var gidIndex: Int?

    @Flag(name: [.short, .customLong("events")], help: "Sleep on the event channel instead of busy-polling.")
    var events = false

    @Flag(name: [.short, .customLong("chk")], help: "Validate the content of every received message.")
    var check = false

    @Flag(name: .customLong("against-verbs"), help: "Alternate blocks of 64 round trips between the library and bare verbs calls on the same connection, and report what the library adds to a round trip (both sides; polling, without -e and -c).")
    var againstVerbs = false

    @Flag(name: .customLong("verbs-only"), help: "Make every round trip with bare verbs calls (ibv_post_send, ibv_poll_cq, ibv_post_recv) on the connection the library made, not through the library: the reference for what the rest of the process costs (both sides; polling, without -e and -c).")
    var verbsOnly = false

    @Flag(name: .customLong("json"), help: "Print the results as one JSON object.")
    var json = false

    @Option(name: .customLong("timeout"), help: "Seconds to wait for the peer when connecting.")
    var timeoutSeconds: Int = 5

    mutating func validate() throws {
        guard (1...(1 << 30)).contains(size) else { throw ValidationError("-s/--size must be between 1 and 1073741824, not \(size)") }
        guard iterations > 0 else { throw ValidationError("-n/--iters must be positive, not \(iterations)") }
        guard timeoutSeconds > 0 else { throw ValidationError("--timeout must be positive") }
        if let gidIndex, !(0...255).contains(gidIndex) { throw ValidationError("-g/--gid-idx must be between 0 and 255, not \(gidIndex)") }
        if verbsOnly {
            guard !againstVerbs else { throw ValidationError("--verbs-only and --against-verbs exclude each other: pick one") }
            guard !events, !check else { throw ValidationError("--verbs-only makes busy-polling round trips with bare verbs calls: leave out -e and -c") }
        }
        if againstVerbs {
            guard !events, !check else { throw ValidationError("--against-verbs compares busy-polling round trips: leave out -e and -c") }
            guard iterations >= 4 * Session.comparisonBlock else {
                throw ValidationError("--against-verbs needs at least \(4 * Session.comparisonBlock) round trips (-n), to compare more than the warm-up")
            }
        }
    }

    func run() throws {
        do {
            // Without -d, the device is the one that owns the bound address.
            let deviceName = try device ?? bindAddress.map { address throws(RDMAError) in try ConnectionID.deviceName(owning: address) }
            let session = try Session(size: size, device: deviceName, events: events, check: check, baseline: verbsOnly ? .only : againstVerbs ? .alternating : .none)
            let timeout = Duration.seconds(timeoutSeconds)
            let connection: Connection
            var socket: Int32 = -1
            defer { if socket >= 0 { close(socket) } }
            let receiveBytes = session.slotSize * session.credits
            if let gidIndex {
                // ibv_rc_pingpong's way: a TCP connection first, then dma_assoc upgrades it.
                if let server {
                    socket = try TCPSocket.connect(to: server, port: port, from: bindAddress)
                } else {
                    let address = bindAddress ?? "0.0.0.0"
                    socket = try TCPSocket.acceptOne(on: address, port: port) { say("  listening on \(address):\(port) (TCP, GID index \(gidIndex))") }
                }
                connection = try Connection(socket: socket, events: session.events, gidIndex: gidIndex)
                try connection.associate(session.area, receiveBytes: receiveBytes, slotSize: session.slotSize, timeout: timeout)
                say("  connected over \(session.events.deviceName), GID index \(gidIndex)")
            } else if let server {
                connection = try Connection(to: "\(server.contains(":") ? "[\(server)]" : server):\(port)", from: bindAddress,
                                            events: session.events, timeout: timeout)
                try connection.associate(session.area, receiveBytes: receiveBytes, slotSize: session.slotSize, timeout: timeout)
                say("  connected to \(server):\(port) over \(session.events.deviceName)")
            } else {
                let address = bindAddress ?? "0.0.0.0"
                let listener = try Listener(on: "\(address.contains(":") ? "[\(address)]" : address):\(port)", events: session.events, backlog: 1)
                say("  listening on \(address):\(port)")
                connection = try listener.accept(timeout: nil)
                try connection.associate(session.area, receiveBytes: receiveBytes, slotSize: session.slotSize, timeout: timeout)
                say("  accepted a client over \(session.events.deviceName)")
            }
            let result = try session.run(connection, iterations: iterations, isClient: server != nil)
            connection.close()
            report(result)
        } catch {
            printError("pingpong: \(error)")
            throw ExitCode(1)
        }
    }

    /// Progress for people: on standard output, or standard error when it carries JSON.
    private func say(_ line: String) {
        if json { printError(line) } else { print(line); fflush(nil) }
    }

    private func report(_ result: Session.Result) {
        let seconds = result.seconds
        let bytes = size * iterations * 2
        let mbits = Double(bytes) * 8 / seconds / 1e6
        let usecPerIter = seconds * 1e6 / Double(iterations)
        let p = result.percentiles
        if json {
            print("""
                {"role":"\(server == nil ? "server" : "client")","size":\(size),"iterations":\(iterations),\
                "events":\(events),"checked":\(check),"verbs_only":\(verbsOnly),"bare_verbs_round_trips":\(result.bareVerbsRoundTrips),"seconds":\(seconds),"mbit_per_sec":\(mbits),\
                "usec_per_iter":\(usecPerIter),"rtt_usec":{"min":\(p.min),"p50":\(p.p50),"p99":\(p.p99),\
                "p99_9":\(p.p999),"max":\(p.max)}\(result.againstVerbs.map(Self.json) ?? "")}
                """)
            return
        }
        print("\(bytes) bytes in \(format(seconds)) seconds = \(format(mbits)) Mbit/sec")
        print("\(iterations) iters in \(format(seconds)) seconds = \(format(usecPerIter)) usec/iter")
        print("round trip usec: min \(format(p.min))  p50 \(format(p.p50))  p99 \(format(p.p99))  p99.9 \(format(p.p999))  max \(format(p.max))")
        if check { print("  content of all \(iterations) messages checked: OK") }
        if verbsOnly { print("  \(result.bareVerbsRoundTrips) of \(iterations) round trips made with bare verbs calls (--verbs-only), not through the library") }
        if let comparison = result.againstVerbs {
            print("against verbs: \(format(comparison.library)) usec per round trip through the library, \(format(comparison.verbs)) usec through bare verbs calls (medians of \(comparison.pairs) block pairs; means \(format(comparison.libraryMean)) and \(format(comparison.verbsMean)))")
            print("  the library adds \(format(comparison.cost)) usec (\(format(comparison.relative * 100))%) to a round trip; \(format(comparison.coverage * 100))% interval \(format(comparison.low)) ... \(format(comparison.high)) usec")
        } else if againstVerbs {
            print("against verbs: too few round trips to compare")
        }
    }

    /// The `--against-verbs` figures as a JSON member.
    private static func json(_ comparison: VerbsComparison) -> String {
        """
        ,"against_verbs":{"pairs":\(comparison.pairs),"block":\(Session.comparisonBlock),"library_usec":\(comparison.library),\
        "verbs_usec":\(comparison.verbs),"cost_usec":\(comparison.cost),"cost_low_usec":\(comparison.low),\
        "cost_high_usec":\(comparison.high),"coverage":\(comparison.coverage),"relative":\(comparison.relative),\
        "library_mean_usec":\(comparison.libraryMean),"verbs_mean_usec":\(comparison.verbsMean)}
        """
    }

    private func format(_ value: Double) -> String {
        let hundredths = (value * 100).rounded()
        let whole = Int(hundredths / 100)
        let fraction = Int(abs(hundredths).truncatingRemainder(dividingBy: 100))
        return "\(whole).\(fraction < 10 ? "0" : "")\(fraction)"
    }
}
