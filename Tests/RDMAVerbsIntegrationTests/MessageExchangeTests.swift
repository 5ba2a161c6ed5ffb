import Foundation
import RDMAVerbs
import Testing

extension RxeIntegration {
    /// Two RC queue pairs joined through rdma_cm stream 10,000 messages of 1 B ... 1 MiB; the
    /// receiver checks the size and every byte of each.
    @Suite struct MessageExchangeOverConnectionManager {
        init() throws { try RxeEnvironment.requireRxeDevice() }

        @Test(.serialized, arguments: [false, true])
        func tenThousandMessagesArriveIntact(useEvents: Bool) throws {
            let before = try ResourceCounts.of(device: RxeEnvironment.deviceName)
            let received = try MessageExchange(count: 10_000, useEvents: useEvents).run()
            #expect(received == 10_000)
            let after = try ResourceCounts.of(device: RxeEnvironment.deviceName)
            #expect(after.objects == before.objects, "leaked: before \(before), after \(after)")
        }

        @Test func sizesCoverOneByteToOneMebibyte() {
            let sizes = Set((0..<10_000).map(MessageExchange.size(of:)))
            #expect(sizes.min() == 1)
            #expect(sizes.max() == 1 << 20)
            #expect(sizes.contains(4096) && sizes.contains(4097) && sizes.contains(65536))
        }

        /// The example tool (on the proposal's API): two processes, polling and event modes,
        /// and with -g over a TCP socket that dma_assoc upgrades; content checked.
        @Test(.serialized, arguments: [[String](), ["-e"], ["-g"]])
        func pingpongExampleRunsBetweenTwoProcesses(extra: [String]) throws {
            let pingpong = RxeEnvironment.productsDirectory.appendingPathComponent("pingpong").path
            let port = String(RxeEnvironment.freshPort())
            let common = ["-p", port, "-n", "500", "-s", "4096", "-c"] + (extra == ["-g"] ? ["-g", RxeEnvironment.gidIndex] : extra)
            let server = Process()
            server.executableURL = URL(fileURLWithPath: pingpong)
            server.arguments = common + ["-b", RxeEnvironment.address]
            let serverOutput = Pipe()
            server.standardOutput = serverOutput
            try server.run()
            // Wait for "listening" before starting the client.
            var seen = Data()
            while !String(decoding: seen, as: UTF8.self).contains("listening") {
                let chunk = serverOutput.fileHandleForReading.availableData
                try #require(!chunk.isEmpty, "pingpong server exited before listening")
                seen += chunk
            }
            let client = try run(pingpong, common + [RxeEnvironment.address], timeout: 120)
            server.waitUntilExit()
            seen += serverOutput.fileHandleForReading.readDataToEndOfFile()
            let serverText = String(decoding: seen, as: UTF8.self)
            #expect(client.status == 0, "client: \(client.standardError)")
            #expect(server.terminationStatus == 0)
            for text in [client.standardOutput, serverText] {
                #expect(text.contains("4096000 bytes in "))
                #expect(text.contains("500 iters in "))
                #expect(text.contains("content of all 500 messages checked: OK"))
                #expect(text.contains("round trip usec: min "))
                // The round trips are stamped one by one: their mean (usec/iter) lies within
                // their spread, and none is zero.
                let perIteration = try #require(Self.number(after: ["iters in ", "seconds = "], in: text))
                let fastest = try #require(Self.number(after: ["round trip usec: min "], in: text))
                let slowest = try #require(Self.number(after: ["round trip usec: ", "max "], in: text))
                #expect(fastest > 0 && fastest <= perIteration && perIteration <= slowest, "\(text)")
            }
        }

        /// The number that follows the last of `markers`, each looked for after the one before.
        private static func number(after markers: [String], in text: String) -> Double? {
            var rest = text[...]
            for marker in markers {
                guard let range = rest.range(of: marker) else { return nil }
                rest = rest[range.upperBound...]
            }
            return Double(rest.prefix { $0.isNumber || $0 == "." })
        }
    }
}
