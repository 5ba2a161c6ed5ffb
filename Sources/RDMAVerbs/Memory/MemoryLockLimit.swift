#if canImport(Glibc)
import Glibc
#endif

/// `RLIMIT_MEMLOCK`, which caps how much memory an unprivileged process may pin for RDMA.
///
/// Registering memory pins it; the kernel refuses a registration that would take the process
/// over its limit unless the process holds `CAP_IPC_LOCK`. This type reads the limit so that
/// errors can name it and say how to raise it.
public struct MemoryLockLimit: Sendable, Hashable {
    /// The soft limit in bytes, or nil when unlimited.
    public let bytes: Int?
    /// Whether the calling thread holds `CAP_IPC_LOCK`, which lifts the limit.
    public let hasIPCLockCapability: Bool

    /// Reads the current limit and capability.
    ///
    /// The corresponding C function is `getrlimit(RLIMIT_MEMLOCK)`; the capability comes from
    /// `/proc/thread-self/status`.
    public static func current() -> MemoryLockLimit {
        var limit = rlimit()
        let bytes: Int?
        if getrlimit(__rlimit_resource_t(__RLIMIT_MEMLOCK.rawValue), &limit) != 0
            || limit.rlim_cur == rlim_t.max
        {
            bytes = nil
        } else {
            bytes = Int(clamping: limit.rlim_cur)
        }
        return MemoryLockLimit(bytes: bytes, hasIPCLockCapability: Self.threadHasIPCLock())
    }

    /// Whether pinning `size` more bytes is allowed, given what is pinned already.
    ///
    /// Unknown pinned amounts count as zero, so this can only under-report: the kernel has the
    /// last word.
    public func allows(pinning size: Int, alreadyPinned: Int = 0) -> Bool {
        guard let bytes, !hasIPCLockCapability else { return true }
        return alreadyPinned + size <= bytes
    }

    /// The advice printed when a registration hits the limit.
    func advice(forRegistering size: Int) -> String {
        let current = bytes.map(formatBytes) ?? "unlimited"
        return "cannot pin \(formatBytes(size)) for RDMA: RLIMIT_MEMLOCK (ulimit -l) is \(current) "
            + "and memory this process already registered counts against it. Raise it: "
            + "`ulimit -l unlimited` in the shell that starts the program, LimitMEMLOCK=infinity "
            + "for a systemd service, or a `memlock` line in /etc/security/limits.conf; "
            + "or grant the program CAP_IPC_LOCK"
    }

    /// Reads `CapEff` of the calling thread; bit 14 is CAP_IPC_LOCK.
    private static func threadHasIPCLock() -> Bool {
        guard let file = fopen("/proc/thread-self/status", "r") else { return false }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 256)
        while fgets(&line, Int32(line.count), file) != nil {
            let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            guard text.hasPrefix("CapEff:") else { continue }
            let hex = text.dropFirst("CapEff:".count).trimmingWhitespace()
            guard let mask = UInt64(hex, radix: 16) else { return false }
            return mask & (1 << 14) != 0
        }
        return false
    }
}

extension Substring {
    func trimmingWhitespace() -> Substring {
        var text = self
        while let first = text.first, first.isWhitespace { text.removeFirst() }
        while let last = text.last, last.isWhitespace { text.removeLast() }
        return text
    }
}
