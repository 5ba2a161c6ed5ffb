// dmaio-reliability: the fault suite, run across two hosts (two VMs joined by one Ethernet
// segment, `rxe-setup vm --hosts 2`). Host 0 leads and writes the report; host 1 plays the
// peer that dies, loses its link, floods, or lies. See scripts/reliability.
//
//   dmaio-reliability run [--cases NAME,...] [--results DIR] [--soak-messages N]
//       (on each host; reads RXE_HOST_INDEX, RXE_ADDR, RXE_PEER_ADDR, RXE_DEVICE, RXE_NETDEV)
//   dmaio-reliability child-stream ADDRESS PORT STREAM [COUNT]  (started by the peer-killed and peer-stopped cases)
//   dmaio-reliability child-memlock ADDRESS PORT          (started by the memlock case)

import CProcessMemory
import Foundation

#if canImport(Glibc)
import Glibc
#endif

@main
enum Reliability {
    static func main() {
        var arguments = Array(CommandLine.arguments.dropFirst())
        let command = arguments.isEmpty ? "" : arguments.removeFirst()
        do {
            switch command {
            case "run": exit(try run(arguments) ? 0 : 1)
            case "child-stream": try ChildProcesses.stream(arguments)
            case "child-memlock": try ChildProcesses.memoryLockLimit(arguments)
            default:
                FileHandle.standardError.write(Data("usage: dmaio-reliability run [--cases NAME,...] [--results DIR] [--soak-messages N]\n".utf8))
                exit(2)
            }
        } catch {
            FileHandle.standardError.write(Data("dmaio-reliability \(command): \(error)\n".utf8))
            exit(1)
        }
    }

    static let controlPort: UInt16 = 7599

    /// Runs the cases as host RXE_HOST_INDEX; true when every case passed (host 0's view).
    static func run(_ arguments: [String]) throws -> Bool {
        var caseNames: [String]? = nil
        var results = "reliability-results"
        var soakMessages = 1_000_000
        var rest = arguments[...]
        while let option = rest.popFirst() {
            guard let value = rest.popFirst() else { throw ReliabilityError("\(option) needs a value") }
            switch option {
            case "--cases": caseNames = value.split(separator: ",").map(String.init)
            case "--results": results = value
            case "--soak-messages":
                guard let count = Int(value), count > 0 else { throw ReliabilityError("--soak-messages needs a positive number") }
                soakMessages = count
            default: throw ReliabilityError("unknown option \(option)")
            }
        }
        let environment = ProcessInfo.processInfo.environment
        guard let hostText = environment["RXE_HOST_INDEX"], let host = Int(hostText), let address = environment["RXE_ADDR"],
              let peer = environment["RXE_PEER_ADDR"]
        else {
            throw ReliabilityError("run me on each host of `rxe-setup vm --hosts 2` (RXE_HOST_INDEX, RXE_ADDR and RXE_PEER_ADDR are not set)")
        }
        var cases: [any ReliabilityCase.Type] = []
        for kind in ReliabilityCases.all where caseNames == nil || caseNames!.contains(kind.name) {
            cases.append(kind)
        }
        if cases.isEmpty {
            throw ReliabilityError("no case named \(caseNames ?? []); the cases: \(ReliabilityCases.all.map { $0.name })")
        }
        // The soak judges resident memory; a huge page folded in by khugepaged would step it by
        // up to 2 MiB with nothing allocated (see CProcessMemory.h).
        guard process_memory_disable_transparent_huge_pages() == 0 else {
            throw ReliabilityError("prctl(PR_SET_THP_DISABLE) failed: errno \(errno) (\(String(cString: strerror(errno))))")
        }
        let control: Control
        if host == 0 {
            control = try Control.accept(on: address, port: controlPort, timeout: .seconds(180))
        } else {
            control = try Control.connect(to: peer, port: controlPort, timeout: .seconds(180))
        }
        let session = Session(host: host, address: address, peerAddress: peer, device: environment["RXE_DEVICE"] ?? "rxe0",
                              netdev: environment["RXE_NETDEV"] ?? "eth0", control: control, soakMessages: soakMessages)
        say("dmaio-reliability: host \(host) at \(address), peer \(peer), device \(session.device) on \(session.netdev)")
        return host == 0 ? try lead(session, cases: cases, results: results) : try follow(session)
    }

    /// Host 0: names each case, runs its half, collects host 1's record, writes the report.
    static func lead(_ session: Session, cases: [any ReliabilityCase.Type], results: String) throws -> Bool {
        let control = session.control
        let started = Date()
        var outcomes: [Report.Outcome] = []
        for kind in cases {
            try control.send("case", kind.name)
            try control.expect("ready", timeout: .seconds(120))
            var record = CaseRecord(name: kind.name, host: 0)
            let clock = ContinuousClock.now
            do {
                try kind.host0(session, &record)
            } catch {
                record.check(false, "host 0 stopped: \(error)")
                try? control.send("failed", "\(error)")
            }
            try control.send("finished")
            // Lines host 1 sent before it heard that the case ended are left behind.
            var words = try control.receive(timeout: .seconds(900)).split(separator: " ").map(String.init)
            while words.first != "record" { words = try control.receive(timeout: .seconds(900)).split(separator: " ").map(String.init) }
            let encoded = words.count > 1 ? words[1] : ""
            guard let data = Data(base64Encoded: encoded) else { throw ReliabilityError("host 1 sent an unreadable record") }
            let other = try JSONDecoder().decode(CaseRecord.self, from: data)
            let outcome = Report.Outcome(kind: kind, host0: record, host1: other, seconds: (ContinuousClock.now - clock).seconds)
            say("dmaio-reliability: \(kind.name): \(outcome.passed ? "PASS" : "FAIL") (\(String(format: "%.1f", outcome.seconds)) s)")
            outcomes.append(outcome)
        }
        try control.send("end")
        let report = Report(outcomes: outcomes, started: started, session: session)
        try report.write(to: results)
        say("dmaio-reliability: \(outcomes.filter(\.passed).count) of \(outcomes.count) cases passed; report in \(results)/report.md")
        return outcomes.allSatisfy(\.passed)
    }

    /// Host 1: runs its half of each case host 0 names, and sends its record back.
    static func follow(_ session: Session) throws -> Bool {
        let control = session.control
        while true {
            let words = try control.receive(timeout: .seconds(3600)).split(separator: " ").map(String.init)
            switch words.first {
            case "case":
                guard words.count == 2, let kind = ReliabilityCases.all.first(where: { $0.name == words[1] }) else {
                    throw ReliabilityError("host 0 named an unknown case: \(words)")
                }
                control.startCase()
                try control.send("ready")
                var record = CaseRecord(name: kind.name, host: 1)
                do {
                    try kind.host1(session, &record)
                } catch {
                    record.check(false, "host 1 stopped: \(error)")
                    try? control.send("failed", "\(error)")
                }
                while !control.finished { _ = try control.receive(timeout: .seconds(900)) }
                try control.send("record", try JSONEncoder().encode(record).base64EncodedString())
            case "end":
                return true
            default:
                continue  // the rest of a case that stopped early
            }
        }
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
