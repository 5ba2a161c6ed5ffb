// stream: one-way streaming, like rstream and perftest's ib_send_bw, on the proposal's API —
// or, with --tcp, the same workload over ordinary TCP sockets, to compare the two.
//
//   receiver:  stream [-p PORT] [-d DEV] [-s SIZE] [-n COUNT] [--slot-size S] [--verify] [-b ADDR]
//   sender:    stream [same options] RECEIVER

import ArgumentParser
import DMAIO
import ExampleSupport
import RDMAVerbs

#if canImport(Glibc)
import Glibc
#endif

@main
struct Stream: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stream",
        abstract: "One-way message stream over RDMA (zero-copy API) or TCP, like ib_send_bw and rstream.",
        discussion: """
            Start the receiver first (no RECEIVER argument), then the sender with the receiver's \
            IP address. Both print perftest's summary columns. With a terminal attached, a \
            progress line is updated each second.
            Messages up to the receiver's slot size (--slot-size) go eagerly, one send each; \
            larger ones by rendezvous: the sender lends the buffer, the receiver reads it into its \
            own area (at most 64 MiB of them in flight).
            Example on soft-RoCE:  stream -s 65536 -n 5000 &  stream -s 65536 -n 5000 10.99.0.1
            """)

    @Argument(help: "The receiver's IP address; without it, run as the receiver.")
    var receiver: String?

    @Option(name: [.short, .customLong("port")], help: "Port to listen on or connect to.")
    var port: UInt16 = 18516

    @Option(name: [.short, .customLong("ib-dev")], help: "The RDMA device (default: the one that owns -b's address, else the first).")
    var device: String?

    @Option(name: [.short, .customLong("bind")], help: "The local address: the receiver listens on it (default: all), the sender leaves from it (default: as routed).")
    var bindAddress: String?

    @Option(name: [.short, .customLong("size")], help: "Message size in bytes (1 ... 1 GiB).")
    var size: Int = 65536

    @Option(name: [.customShort("n"), .customLong("iters")], help: "Number of messages (ignored with --duration).")
    var count: Int = 1000

    @Option(name: [.customShort("D"), .customLong("duration")], help: "Send for this many seconds instead of -n messages.")
    var duration: Int?

    @Option(name: [.customShort("w"), .customLong("window")], help: "Messages in flight (receive slots granted to the sender).")
    var window: Int = 16

    @Option(name: .customLong("slot-size"), help: ArgumentHelp(
        "The receiver's slot size: a larger message goes by rendezvous (the receiver reads it into its area).",
        discussion: "Default: the message size up to 64 KiB, 4096 above it."))
    var slotSize: Int?

    @Flag(name: [.short, .customLong("events")], help: "Sleep on the event channel instead of busy-polling.")
    var events = false

    @Flag(name: .customLong("verify"), help: "Fill and check every byte of every message.")
    var verify = false

    @Flag(name: .customLong("tcp"), help: "Run the same workload over TCP sockets instead of RDMA.")
    var tcp = false

    @Flag(name: .customLong("json"), help: "Print the summary as one JSON object.")
    var json = false

    mutating func validate() throws {
        guard (1...(1 << 30)).contains(size) else { throw ValidationError("-s/--size must be between 1 and 1073741824, not \(size)") }
        guard count > 0 else { throw ValidationError("-n/--iters must be positive, not \(count)") }
        guard (1...4096).contains(window) else { throw ValidationError("-w/--window must be between 1 and 4096, not \(window)") }
        if let duration, duration <= 0 { throw ValidationError("-D/--duration must be positive") }
        if let slotSize, !(1...(1 << 30)).contains(slotSize) { throw ValidationError("--slot-size must be between 1 and 1073741824, not \(slotSize)") }
        if slotSize != nil, tcp { throw ValidationError("--slot-size is for RDMA; --tcp has no slots") }
    }

    func run() throws {
        let meter = Meter(size: size, live: !json && isatty(1) == 1)
        let pattern = verify ? Pattern(size: size) : nil
        let limit: Limit = duration.map { .seconds($0) } ?? .messages(count)
        do {
            if tcp {
                let transport = TCPTransport(size: size, pattern: pattern)
                if let receiver {
                    try transport.send(to: receiver, from: bindAddress, port: port, limit: limit, meter: meter)
                } else {
                    try transport.receive(on: bindAddress ?? "0.0.0.0", port: port, meter: meter, announce: announce)
                }
            } else {
                // Without -d, the device is the one that owns the bound address.
                let deviceName = try device ?? bindAddress.map { address throws(RDMAError) in try ConnectionID.deviceName(owning: address) }
                let transport = try RDMATransport(size: size, slotSize: slotSize ?? (size <= 64 << 10 ? size : 4096), window: window, device: deviceName, useEvents: events, pattern: pattern)
                if let receiver {
                    try transport.send(to: receiver, from: bindAddress, port: port, limit: limit, meter: meter)
                } else {
                    try transport.receive(on: bindAddress ?? "0.0.0.0", port: port, meter: meter, announce: announce)
                }
            }
        } catch {
            printError("stream: \(error)")
            throw ExitCode(1)
        }
        meter.finish()
        print(meter.summary(json: json, transport: tcp ? "tcp" : "rdma", role: receiver == nil ? "receiver" : "sender", verified: verify))
    }

    /// Progress for people: on standard output, or standard error when it carries JSON.
    private func announce(_ line: String) {
        if json { printError(line) } else { print(line); fflush(nil) }
    }
}

/// How long the sender sends.
enum Limit {
    case messages(Int)
    case seconds(Int)
}
