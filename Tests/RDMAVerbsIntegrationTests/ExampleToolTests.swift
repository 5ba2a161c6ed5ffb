import Foundation
import Testing

extension RxeIntegration {
    /// The example tools as users run them: two processes on the rxe device.
    @Suite struct ExampleTools {
        init() throws { try RxeEnvironment.requireRxeDevice() }

        private func tool(_ name: String) -> String { RxeEnvironment.productsDirectory.appendingPathComponent(name).path }

        /// Starts `receiverArguments`, waits for its "listening" line, runs the sender to the end
        /// and returns both outputs.
        private func runPair(_ name: String, receiver receiverArguments: [String], sender senderArguments: [String]) throws -> (receiver: String, sender: CommandResult, receiverStatus: Int32) {
            let receiver = Process()
            receiver.executableURL = URL(fileURLWithPath: tool(name))
            receiver.arguments = receiverArguments
            // Both streams: with --json the "listening" line goes to standard error.
            let output = Pipe()
            receiver.standardOutput = output
            receiver.standardError = output
            try receiver.run()
            var seen = Data()
            while !String(decoding: seen, as: UTF8.self).contains("listening") {
                let chunk = output.fileHandleForReading.availableData
                try #require(!chunk.isEmpty, "\(name) receiver exited before listening")
                seen += chunk
            }
            let sender = try run(tool(name), senderArguments, timeout: 120)
            receiver.waitUntilExit()
            seen += output.fileHandleForReading.readDataToEndOfFile()
            return (String(decoding: seen, as: UTF8.self), sender, receiver.terminationStatus)
        }

        /// The JSON object on the last line of `output` (with --json the tools print it last).
        private func lastJSONObject(_ output: String) throws -> [String: Any] {
            let line = try #require(output.split(separator: "\n").last)
            return try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        }

        /// Runs pingpong's server and client with `arguments` on a fresh port (the client with
        /// --json), expects both to exit 0, and returns the server's output and the client's JSON.
        private func runPingpong(_ arguments: [String]) throws -> (serverOutput: String, client: [String: Any]) {
            let common = ["-p", String(RxeEnvironment.freshPort())] + arguments
            let (serverOutput, client, serverStatus) = try runPair(
                "pingpong", receiver: common + ["-b", RxeEnvironment.address], sender: common + ["--json", RxeEnvironment.address])
            #expect(client.status == 0, "client: \(client.standardError)")
            #expect(serverStatus == 0, "server: \(serverOutput)")
            return (serverOutput, try lastJSONObject(client.standardOutput))
        }

        @Test(.serialized, arguments: [[String](), ["-e"], ["--tcp"]])
        func streamRunsBetweenTwoProcessesWithContentChecked(mode: [String]) throws {
            let port = String(RxeEnvironment.freshPort())
            let common = ["-p", port, "-s", "65536", "-n", "300", "--verify"] + mode
            let (receiverOutput, sender, receiverStatus) = try runPair(
                "stream", receiver: common + ["-b", RxeEnvironment.address], sender: common + [RxeEnvironment.address])
            #expect(sender.status == 0, "sender: \(sender.standardError)")
            #expect(receiverStatus == 0)
            for text in [receiverOutput, sender.standardOutput] {
                #expect(text.contains(" #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]"))
                #expect(text.contains(" 65536      300 "))
                #expect(text.contains("content of all 300 messages checked: OK"))
            }
        }

        /// Messages larger than the receiver's slots (4 KiB by default above 64 KiB) go by
        /// rendezvous: the receiver reads each into its area; every byte is checked.
        @Test(.serialized, arguments: [(1 << 20, 40, [String]()), (16 << 20, 6, ["-e"])])
        func streamSendsLargeMessagesByRendezvous(size: Int, count: Int, mode: [String]) throws {
            let port = String(RxeEnvironment.freshPort())
            let common = ["-p", port, "-s", String(size), "-n", String(count), "--verify"] + mode
            let (receiverOutput, sender, receiverStatus) = try runPair(
                "stream", receiver: common + ["-b", RxeEnvironment.address], sender: common + [RxeEnvironment.address])
            #expect(sender.status == 0, "sender: \(sender.standardError)")
            #expect(receiverStatus == 0)
            for text in [receiverOutput, sender.standardOutput] {
                let rows = text.split(separator: "\n").map { $0.split(separator: " ").prefix(2).map(String.init) }
                #expect(rows.contains([String(size), String(count)]), "no row for \(size) bytes × \(count) in: \(text)")
                #expect(text.contains("content of all \(count) messages checked: OK"))
            }
        }

        @Test func streamPrintsJSON() throws {
            let port = String(RxeEnvironment.freshPort())
            let common = ["-p", port, "-s", "4096", "-n", "200", "--json"]
            let (receiverOutput, sender, _) = try runPair(
                "stream", receiver: common + ["-b", RxeEnvironment.address], sender: common + [RxeEnvironment.address])
            let object = try lastJSONObject(sender.standardOutput)
            #expect(object["iterations"] as? Int == 200)
            #expect(object["transport"] as? String == "rdma")
            #expect((object["bw_average_mb_per_sec"] as? Double ?? 0) > 0)
            #expect(receiverOutput.contains("\"role\":\"receiver\""))
        }

        /// `pingpong --against-verbs`: blocks of round trips through the library alternate with
        /// blocks through bare verbs calls on the same connection; both sides report the
        /// comparison, and the library carries on where the baseline left off (the run ends with
        /// a library block, and its last sends must complete for the tool to exit 0).
        @Test(.serialized, arguments: [64, 4096])
        func pingpongComparesTheLibraryWithBareVerbs(size: Int) throws {
            // 11 blocks of 64: library, verbs, ..., library; the first pair is warm-up.
            let (serverOutput, object) = try runPingpong(["-s", String(size), "-n", "704", "--against-verbs"])
            #expect(serverOutput.contains("704 iters in "))
            #expect(serverOutput.contains("against verbs: "))
            #expect(serverOutput.contains("through bare verbs calls (medians of 4 block pairs"))
            let comparison = try #require(object["against_verbs"] as? [String: Any])
            #expect(comparison["pairs"] as? Int == 4)
            #expect(object["bare_verbs_round_trips"] as? Int == 5 * 64)
            #expect(comparison["block"] as? Int == 64)
            let library = try #require(comparison["library_usec"] as? Double)
            let verbs = try #require(comparison["verbs_usec"] as? Double)
            let cost = try #require(comparison["cost_usec"] as? Double)
            let low = try #require(comparison["cost_low_usec"] as? Double)
            let high = try #require(comparison["cost_high_usec"] as? Double)
            #expect(library > 0 && verbs > 0)
            #expect(low <= cost && cost <= high)
            #expect((comparison["verbs_mean_usec"] as? Double ?? 0) > 0)
        }

        /// `pingpong --verbs-only`: every round trip through bare verbs calls on the connection the
        /// library made, start to end; both sides say so and report as usual.
        @Test func pingpongRunsOnBareVerbsOnly() throws {
            let (serverOutput, object) = try runPingpong(["-s", "64", "-n", "300", "--verbs-only"])
            #expect(serverOutput.contains("300 iters in "))
            #expect(serverOutput.contains("300 of 300 round trips made with bare verbs calls (--verbs-only)"))
            #expect(object["verbs_only"] as? Bool == true)
            #expect(object["bare_verbs_round_trips"] as? Int == 300)
            #expect(object["iterations"] as? Int == 300)
            #expect((object["usec_per_iter"] as? Double ?? 0) > 0)
            #expect(object["against_verbs"] == nil)
        }

        /// `echo`: the async server serves 16 clients at once, one task per connection on one
        /// event channel, every byte checked; the client then cancels a task that waits for a
        /// message, which ends within 100 ms, and its connection goes on.
        @Test func echoServesSixteenClientsAtOnceAndACancelEndsAWait() throws {
            let port = String(RxeEnvironment.freshPort())
            let (serverOutput, client, serverStatus) = try runPair(
                "echo", receiver: ["server", "-b", RxeEnvironment.address, "-p", port, "--clients", "17"],
                sender: ["client", RxeEnvironment.address, "-p", port, "--clients", "16", "--requests", "50", "--cancel"])
            #expect(client.status == 0, "client: \(client.standardError)")
            #expect(serverStatus == 0, "server: \(serverOutput)")
            #expect(client.standardOutput.contains("echo: 16 connections, 800 echoes of 1 B ... 65536 B in "))
            #expect(client.standardOutput.contains("content checked: OK"))
            #expect(serverOutput.components(separatedBy: ": 50 messages echoed, the client closed").count == 17)
            let line = try #require(client.standardOutput.split(separator: "\n").first { $0.contains("after its cancel") })
            print(line)
            let milliseconds = try #require(Double(line.split(separator: " ").drop { $0 != "ended" }.dropFirst().first ?? ""))
            #expect(milliseconds < 100, "the cancelled task ended \(milliseconds) ms after its cancel")
            #expect(line.hasSuffix("the connection then echoed 10 more messages: OK"))
        }

        @Test func wrongOptionsGiveAUsageError() throws {
            for (name, arguments) in [("stream", ["-s", "0"]), ("stream", ["--bogus"]), ("stream", ["--slot-size", "0"]),
                                      ("stream", ["--tcp", "--slot-size", "4096"]), ("pingpong", ["-n", "-3"]), ("pingpong", ["-s", "x"]),
                                      ("pingpong", ["--against-verbs", "-e"]), ("pingpong", ["--against-verbs", "-c"]),
                                      ("pingpong", ["--against-verbs", "-n", "255"]), ("pingpong", ["--verbs-only", "-e"]),
                                      ("pingpong", ["--verbs-only", "--against-verbs"]), ("echo", ["client", "10.99.0.1", "--max-size", "0"])] {
                let result = try run(tool(name), arguments)
                #expect(result.status == 64, "\(name) \(arguments): \(result.standardError)")
                #expect(result.standardError.contains("Usage: \(name)"))
            }
        }

        @Test func streamToAnUnreachablePeerFailsQuickly() throws {
            let started = ContinuousClock.now
            let result = try run(tool("stream"), ["-n", "1", "10.99.0.99"], timeout: 30)
            #expect(result.status == 1)
            #expect(result.standardError.hasPrefix("stream: "))
            #expect(ContinuousClock.now - started < .seconds(15))
        }
    }
}
