import Foundation
import Testing

/// `dmaio.h` is the C ABI's contract: it must compile cleanly as C11 and as C++ with every
/// warning an error, so that any C or C++ program can include it.
@Suite struct CHeaderTests {
    static let headerDirectory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Sources/CDMAIO/include")

    /// The Swift toolchain's clang, which every machine that builds the package has.
    @Test(arguments: [
        ("clang", "c", ["-std=c11"]), ("clang", "c", ["-std=c17", "-D_GNU_SOURCE"]),
        ("clang++", "cpp", ["-std=c++11"]), ("clang++", "cpp", ["-std=c++17"]),
    ])
    func headerCompilesWithoutWarnings(compiler: String, suffix: String, standard: [String]) throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("dmaio-header-\(getpid())-\(suffix)-\(standard[0])")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let source = directory.appendingPathComponent("use.\(suffix)")
        // Uses every type and a few macros, so an unused or malformed declaration shows.
        try """
            #include "dmaio.h"
            #include "dmaio.h" /* include guard */
            int use(void);
            int use(void) {
                struct ec_event event = {0, 0, 0, 0, 0, 0, 0};
                struct dma_aiocb block = {0, 0, 0, 0, 0, 0};
                dma_mem_t area = 0;
                ec_t ec = 0;
                (void)area; (void)ec; (void)block;
                return event.type + DMA_SLOT_LOG2(12) + DMA_HUGEPAGES + EC_EVENT_RECEIVED + DMA_SLOT_DEFAULT;
            }
            """.write(to: source, atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [compiler] + standard + ["-Wall", "-Wextra", "-Werror", "-pedantic", "-I", Self.headerDirectory.path,
                                                     "-c", source.path, "-o", directory.appendingPathComponent("use.o").path]
        let errors = Pipe()
        process.standardError = errors
        try process.run()
        process.waitUntilExit()
        let output = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(process.terminationStatus == 0, "\(compiler) \(standard.joined(separator: " ")): \(output)")
    }
}
