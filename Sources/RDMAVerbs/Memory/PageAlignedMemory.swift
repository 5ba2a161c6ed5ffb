import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Anonymous, page-aligned memory from `mmap`, unmapped exactly once when the owner goes away.
///
/// Registered memory must never move or be reallocated (the keys the device holds would point
/// at the old pages), so it is mapped once at its final size.
struct PageAlignedMemory: ~Copyable {
    let bytes: UnsafeMutableRawBufferPointer

    /// The system page size.
    static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
    /// The huge page size assumed with `hugePages: true` (2 MiB on x86-64).
    static let hugePageSize = 2 << 20

    /// Maps at least `length` bytes (rounded up to whole pages), zero-filled.
    ///
    /// With `hugePages`, asks for `MAP_HUGETLB`; that fails unless huge pages are reserved
    /// (`/proc/sys/vm/nr_hugepages`), and the error says so.
    ///
    /// The corresponding C function is `mmap`.
    init(length: Int, hugePages: Bool) throws(RDMAError) {
        let unit = hugePages ? Self.hugePageSize : Self.pageSize
        let (rounded, overflow) = length.addingReportingOverflow(unit - 1)
        guard length > 0, !overflow else {
            throw RDMAError.invalidArgument("mmap", "cannot map \(length) bytes: the size must be positive")
        }
        let size = rounded / unit * unit
        var flags = MAP_PRIVATE | MAP_ANONYMOUS
        if hugePages { flags |= MAP_HUGETLB }
        let address = mmap(nil, size, PROT_READ | PROT_WRITE, flags, -1, 0)
        guard let address, address != MAP_FAILED else {
            let errno = currentErrno()
            let hint = hugePages
                ? "mapping \(formatBytes(size)) of huge pages: reserve them first "
                    + "(echo N > /proc/sys/vm/nr_hugepages) or ask for normal pages"
                : "mapping \(formatBytes(size)) of memory"
            throw RDMAError.system("mmap", errno: errno, hint)
        }
        bytes = UnsafeMutableRawBufferPointer(start: address, count: size)
    }

    deinit {
        munmap(bytes.baseAddress, bytes.count)
    }
}
