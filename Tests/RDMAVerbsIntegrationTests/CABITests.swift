import Foundation
import Testing

extension RxeIntegration {
    /// The C ABI (dmaio.h, libdmaio.so) as C programs use it: the C test program, which checks
    /// every call against the header, and the C ping-pong example, across two processes.
    @Suite struct CABI {
        init() throws { try RxeEnvironment.requireRxeDevice() }

        /// The second process's device and address: the VM's rxe1, or the same device on a host
        /// with one.
        private var peerDevice: String { ProcessInfo.processInfo.environment["RXE_PEER_DEVICE"] ?? RxeEnvironment.deviceName }
        private var peerAddress: String { ProcessInfo.processInfo.environment["RXE_PEER_ADDR"] ?? RxeEnvironment.address }

        private func product(_ name: String) -> String { RxeEnvironment.productsDirectory.appendingPathComponent(name).path }

        /// Every call's documented behaviour and errors, one and two processes (TAP output).
        @Test func cTestProgramPassesEveryCheck() throws {
            let result = try run(tool("env"), [
                "RXE_DEVICE=\(RxeEnvironment.deviceName)", "RXE_ADDR=\(RxeEnvironment.address)",
                "RXE_PEER_DEVICE=\(peerDevice)", "RXE_PEER_ADDR=\(peerAddress)", product("dmaio-c-tests"),
            ], timeout: 300)
            let lines = result.standardOutput.split(separator: "\n")
            let failed = lines.filter { $0.hasPrefix("not ok") }
            let passed = lines.filter { $0.hasPrefix("ok ") }.count
            print("dmaio-c-tests: \(passed) checks passed, \(failed.count) failed")
            #expect(result.status == 0, "dmaio-c-tests exited \(result.status): \(failed.joined(separator: "\n"))\n\(result.standardError.suffix(2000))")
            #expect(failed.isEmpty, "\(failed.joined(separator: "\n"))")
            #expect(passed > 100, "only \(passed) checks ran")
            #expect(!result.standardOutput.contains("Bail out!"))
        }

        /// Runs a C example's server on this device's address and its client on the peer
        /// device, as users do: the server until its output says `ready`, then the client; both
        /// must exit 0. Returns the client's output and the server's, each line marked
        /// `[server] `.
        private func runCExample(_ name: String, server: [String], client: [String], ready: String) throws -> CommandResult {
            let port = String(RxeEnvironment.freshPort())
            // $1 device, $2 address, $3 port, $4 peer device, $5 program, $6 peer address, $7 ready,
            // $8 the number of server arguments; then the server's and the client's arguments.
            let script = """
                device=$1 address=$2 port=$3 peer_device=$4 program=$5 peer_address=$6 ready=$7 count=$8
                shift 8
                server_args=""; i=0
                while [ $i -lt "$count" ]; do server_args="$server_args $1"; shift; i=$((i + 1)); done
                log=$(mktemp)
                DMAIO_DEVICE="$device" "$program" $server_args -b "$address" -p "$port" > "$log" 2>&1 &
                server=$!
                for _ in $(seq 1 300); do grep -q "$ready" "$log" && break; kill -0 $server 2>/dev/null || break; sleep 0.1; done
                DMAIO_DEVICE="$peer_device" "$program" "$@" -b "$peer_address" -p "$port" "$address"; client=$?
                wait $server; status=$?
                sed 's/^/[server] /' "$log"; rm -f "$log"
                [ $client -eq 0 ] && [ $status -eq 0 ]
                """
            let arguments = ["-c", script, "\(name)-test", RxeEnvironment.deviceName, RxeEnvironment.address, port, peerDevice,
                             product(name), peerAddress, ready, String(server.count)] + server + client
            let result = try run(tool("sh"), arguments, timeout: 240)
            #expect(result.status == 0, "\(result.standardOutput)\n\(result.standardError)")
            return result
        }

        /// The example: a TCP connection upgraded by dma_assoc on both ends, 10,000 messages
        /// (5,000 round trips) with every byte checked, each side sleeping in poll() on ec_to_fd.
        @Test func cPingPongExchangesTenThousandMessagesOverAnUpgradedSocket() throws {
            let result = try runCExample("c-pingpong", server: ["-n", "5000", "-s", "4096"], client: ["-n", "5000", "-s", "4096"],
                                         ready: "waiting")
            #expect(result.standardOutput.contains("5000 iters in"))
            // Both sides check every message they receive.
            #expect(result.standardOutput.components(separatedBy: "content of all 5000 messages checked: OK").count == 3,
                    "\(result.standardOutput)")
            print(result.standardOutput.split(separator: "\n").filter { $0.contains("usec/iter") }.joined(separator: "\n"))
        }

        /// The second example, an epoll echo server, in two processes as a user runs it: 8
        /// clients at once (4 upgraded TCP sockets, 4 rdma_cm), 100 messages each, every echo
        /// checked; the server exits after its 8 clients have come and gone.
        @Test func cEchoServesEightClientsAtOnce() throws {
            let result = try runCExample("c-echo", server: ["server", "-c", "8"], client: ["client", "-c", "8", "-n", "100"],
                                         ready: "listening")
            #expect(result.standardOutput.contains("c-echo: 8 connections, 800 echoes of 1 B ... 65536 B in "), "\(result.standardOutput)")
            #expect(result.standardOutput.components(separatedBy: ": 100 messages echoed, the client closed").count == 9,
                    "\(result.standardOutput)")
            print(result.standardOutput.split(separator: "\n").filter { $0.contains("echoes of") }.joined(separator: "\n"))
        }
    }
}
