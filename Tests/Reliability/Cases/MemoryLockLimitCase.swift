import DMAIO
import Foundation
import RDMAVerbs

/// Case 4: a process whose RLIMIT_MEMLOCK is 64 KiB.
enum MemoryLockLimitCase: ReliabilityCase {
    static let name = "memlock-64k"
    static let title = "RLIMIT_MEMLOCK of 64 KiB"
    static let summary = "A process without CAP_IPC_LOCK and a 64 KiB RLIMIT_MEMLOCK asks for a 1 MiB area (must fail with the actionable error), then a 16 KiB one (must carry 20 messages)."
    static let procedure = """
        Host 1 starts a child without CAP_IPC_LOCK (`setpriv --bounding-set -ipc_lock`; root \
        would otherwise ignore the limit) that sets RLIMIT_MEMLOCK to 64 KiB, asks for a 1 MiB \
        area, then for a 16 KiB one, and sends 20 messages to host 0 through the small one. The \
        large area must fail with the memory-lock error naming the limit and how to raise it; \
        the small one must work.
        """

    static func host0(_ session: Session, _ record: inout CaseRecord) throws {
        let events = try EventChannel()
        let area = try DMAArea(size: 1 << 20)
        let listener = try Listener(on: "\(session.address):\(session.port(0, of: name))", events: events)
        try session.control.send("listening")
        let connection = try Endpoints.accept(1, on: listener, area: area, receiveBytes: 4 << 10, slotSize: 1024)[0]
        let traffic = Traffic(events: events, area: area, size: 512)
        let flow = traffic.add(connection, stream: 7)
        try traffic.run(until: { flow.account.received >= 20 }, timeout: .seconds(60), what: "the child's messages")
        record.check(flow.account.received == 20 && flow.account.clean, "the limited child's 20 messages arrived: \(flow.account.summary)")
        try session.control.expect("child-done", timeout: .seconds(60))
        connection.close()
    }

    static func host1(_ session: Session, _ record: inout CaseRecord) throws {
        try session.control.expect("listening", timeout: .seconds(60))
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        child.arguments = ["--bounding-set", "-ipc_lock", "--", session.executable, "child-memlock", session.serverAddress, "\(session.port(0, of: name))"]
        let output = Pipe()
        child.standardOutput = output
        try child.run()
        record.did("started `setpriv --bounding-set -ipc_lock -- dmaio-reliability child-memlock` (the child sets RLIMIT_MEMLOCK to 64 KiB itself)")
        ChildProcesses.collect(child, output: output, into: &record)
        record.check(child.terminationReason == .exit && child.terminationStatus == 0, "the child exited with status \(child.terminationStatus)")
        try session.control.send("child-done")
    }
}
