import Foundation

/// One host's part in a run: who it is, where the other host is, the control channel, and the
/// cases to run. Host 0 leads: it names each case, and writes the report.
final class Session {
    let host: Int
    let address: String
    let peerAddress: String
    let device: String
    let netdev: String
    let control: Control
    /// This program, for the child processes some cases start.
    let executable: String
    let soakMessages: Int

    init(host: Int, address: String, peerAddress: String, device: String, netdev: String, control: Control, soakMessages: Int) {
        self.host = host
        self.address = address
        self.peerAddress = peerAddress
        self.device = device
        self.netdev = netdev
        self.control = control
        self.soakMessages = soakMessages
        executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
    }

    /// The address host 0 listens on in every case.
    var serverAddress: String { host == 0 ? address : peerAddress }

    /// A port of the case's own, so that a case never meets the previous case's leftovers.
    func port(_ index: Int, of name: String) -> UInt16 {
        UInt16(7600 + 10 * (ReliabilityCases.all.firstIndex { $0.name == name } ?? 0) + index)
    }
}

/// A fault case: what each host does, and what the report says about it.
protocol ReliabilityCase {
    static var name: String { get }
    /// The report's one-line title.
    static var title: String { get }
    /// The case in one sentence, for the report's table.
    static var summary: String { get }
    /// What the case does, step by step, for the report.
    static var procedure: String { get }
    static func host0(_ session: Session, _ record: inout CaseRecord) throws
    static func host1(_ session: Session, _ record: inout CaseRecord) throws
}

enum ReliabilityCases {
    nonisolated(unsafe) static let all: [any ReliabilityCase.Type] = [
        PeerKilled.self, PeerStopped.self, LinkFlap.self, LinkDown.self, StalledReceiver.self, MemoryLockLimitCase.self,
        SixtyFourConnections.self, HostileHandshake.self, MixedSizes.self, Soak.self, LoadedSoak.self,
    ]
}
