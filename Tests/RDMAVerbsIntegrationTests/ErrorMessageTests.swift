import Foundation
import RDMAVerbs
import Testing

extension RxeIntegration {
    /// The situations users hit most, each a typed error whose message says what to do.
    @Suite struct ErrorMessages {
        init() throws { try RxeEnvironment.requireRxeDevice() }

        private var pingpong: String { RxeEnvironment.productsDirectory.appendingPathComponent("pingpong").path }

        /// With no usable device (the provider drivers hidden in a private mount namespace),
        /// the tool says how to get one.
        @Test func noDeviceSaysRunRxeSetup() throws {
            let script = "mount -t tmpfs none /etc/libibverbs.d && exec \"$0\" \"$@\""
            let result = try run(tool("unshare"), ["-m", "sh", "-c", script, pingpong, "-n", "1", RxeEnvironment.address])
            #expect(result.status == 1)
            // librdmacm notices first (the tool asks it for its devices before anything else).
            #expect(result.standardError.contains(
                "rdma_get_devices: no RDMA device found: run rxe-setup up, or rxe-setup vm -- CMD"),
                "stderr: \(result.standardError)")
        }

        @Test func unknownDeviceNameListsTheDevicesThereAre() throws {
            #expect {
                _ = try Context(deviceName: "nosuch9")
            } throws: { error in
                let error = error as! RDMAError
                return error.code == .deviceNotFound
                    && error.message.hasPrefix("no RDMA device named nosuch9; devices here: ")
                    && error.message.contains(RxeEnvironment.deviceName)
            }
        }

        /// A registration larger than RLIMIT_MEMLOCK (in a process without CAP_IPC_LOCK) names
        /// the limit, the size, and how to raise it.
        @Test func memoryLockLimitSaysWhichLimitAndHowToRaiseIt() throws {
            let result = try run(tool("prlimit"), [
                "--memlock=65536:65536", tool("setpriv"), "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock",
                pingpong, "-b", RxeEnvironment.address, "-p", String(RxeEnvironment.freshPort()), "-s", "1048576",
            ])
            #expect(result.status == 1)
            // The tool's area: 18 slots of 1 MiB (8 receive slots, as much credit room, 2 send buffers).
            #expect(result.standardError.contains("ibv_reg_mr: cannot pin 18 MiB for RDMA: RLIMIT_MEMLOCK (ulimit -l) is 64 KiB"),
                    "stderr: \(result.standardError)")
            #expect(result.standardError.contains("`ulimit -l unlimited`"))
        }

        /// A port whose link is down is refused with the port's state and the fix.
        @Test func portThatIsNotActiveIsRefused() throws {
            let ip = tool("ip"), rdma = tool("rdma")
            #expect(try run(ip, ["link", "add", "rxtest0", "type", "veth", "peer", "name", "rxtest1"]).status == 0)
            defer {
                _ = try? run(rdma, ["link", "delete", "rxetest"])
                _ = try? run(ip, ["link", "delete", "rxtest0"])
            }
            // rxtest1 stays down, so rxtest0 has no carrier and the rxe port is DOWN.
            #expect(try run(ip, ["link", "set", "rxtest0", "up"]).status == 0)
            let added = try run(rdma, ["link", "add", "rxetest", "type", "rxe", "netdev", "rxtest0"])
            try #require(added.status == 0, "rdma link add: \(added.standardError)")
            let context = try Context(deviceName: "rxetest")
            #expect {
                try context.requireActivePort()
            } throws: { error in
                let error = error as! RDMAError
                return error.code == .portNotActive
                    && error.message.hasPrefix("port 1 of rxetest is DOWN, not ACTIVE: bring its network interface up")
            }
        }

        @Test func addressThatNoDeviceOwnsIsRefused() throws {
            let id = try ConnectionID(channel: try ConnectionEventChannel())
            #expect {
                try id.bind(to: try SocketAddress(host: "10.99.0.77", port: 7471))
            } throws: { error in
                let error = error as! RDMAError
                return error.code == .addressNotAvailable
                    && error.message.hasPrefix("no RDMA device owns address 10.99.0.77")
            }
        }

        /// Connecting where nobody listens fails fast with a connection error, not a hang.
        @Test func peerWithoutListenerIsRefusedQuickly() throws {
            let started = ContinuousClock.now
            let result = try run(pingpong, ["-n", "1", "-p", String(RxeEnvironment.freshPort()), RxeEnvironment.address], timeout: 30)
            #expect(result.status == 1)
            #expect(result.standardError.contains("rdma_connect: the peer rejected the connection"), "stderr: \(result.standardError)")
            #expect(ContinuousClock.now - started < .seconds(10))
        }

        /// An address on the subnet that nobody answers for fails within the timeout given.
        @Test func unreachablePeerFailsWithinTheTimeout() throws {
            let started = ContinuousClock.now
            let result = try run(pingpong, ["-n", "1", "--timeout", "2", "10.99.0.99"], timeout: 30)
            #expect(result.status == 1)
            #expect(result.standardError.contains("no RDMA device has a route to that address")
                    || result.standardError.contains("the peer did not answer")
                    || result.standardError.contains("no ADDR_RESOLVED within"),
                    "stderr: \(result.standardError)")
            #expect(ContinuousClock.now - started < .seconds(10))
        }
    }
}
