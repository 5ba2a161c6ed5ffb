import CRDMA
import SystemPackage
import Testing
@testable import RDMAVerbs

@Suite struct ErrorTests {
    @Test func descriptionNamesCallMessageAndErrno() {
        let error = RDMAError.system("ibv_alloc_pd", errno: .noMemory, "allocating a protection domain on rxe0")
        #expect(error.code == .systemCall)
        #expect(error.description == "ibv_alloc_pd: allocating a protection domain on rxe0 [errno 12: Cannot allocate memory]")
    }

    @Test(arguments: [
        (Errno.invalidArgument, RDMAError.Code.invalidArgument),
        (.timedOut, .timedOut),
        (.notSupported, .unsupported),
        (.addressNotAvailable, .addressNotAvailable),
        (Errno(rawValue: 19), .addressNotAvailable),
        (.connectionRefused, .connectionFailed),
        (.noRouteToHost, .connectionFailed),
        (.permissionDenied, .systemCall),
    ])
    func errnoIsClassified(errno: Errno, code: RDMAError.Code) {
        #expect(RDMAError.system("call", errno: errno, "doing it").code == code)
    }

    @Test func noDeviceSaysHowToGetOne() {
        #expect(RDMAError.noDevice().code == .noDevice)
        #expect(RDMAError.noDevice().description.hasPrefix("ibv_get_device_list: "))
        #expect(RDMAError.noDevice().message.hasPrefix("no RDMA device found: run rxe-setup up, or rxe-setup vm -- CMD"))
    }

    @Test func memoryLockAdviceNamesLimitSizeAndFixes() {
        let limit = MemoryLockLimit(bytes: 64 << 10, hasIPCLockCapability: false)
        #expect(!limit.allows(pinning: 1 << 20))
        #expect(limit.allows(pinning: 4096))
        #expect(!limit.allows(pinning: 4096, alreadyPinned: 62 << 10))
        let advice = limit.advice(forRegistering: 1 << 20)
        #expect(advice.contains("cannot pin 1 MiB"))
        #expect(advice.contains("RLIMIT_MEMLOCK (ulimit -l) is 64 KiB"))
        #expect(advice.contains("ulimit -l unlimited"))
        #expect(advice.contains("LimitMEMLOCK=infinity"))
        #expect(advice.contains("/etc/security/limits.conf"))
    }

    @Test func capabilityOrUnlimitedLiftsTheLimit() {
        #expect(MemoryLockLimit(bytes: 4096, hasIPCLockCapability: true).allows(pinning: 1 << 30))
        #expect(MemoryLockLimit(bytes: nil, hasIPCLockCapability: false).allows(pinning: 1 << 30))
    }

    @Test func workCompletionStatusHasLibraryText() {
        #expect(WorkCompletion.Status.success.description == "success")
        #expect(WorkCompletion.Status.retryExceeded.description == "transport retry counter exceeded")
        var completion = WorkCompletion()
        completion.raw.status = IBV_WC_RNR_RETRY_EXC_ERR
        let error = RDMAError.workCompletion(completion, "a send")
        #expect(error.code == .workCompletion)
        #expect(error.message.contains("a send failed with status \"RNR retry counter exceeded\""))
    }

    @Test(arguments: [(0, "0 B"), (100, "100 B"), (1024, "1 KiB"), (65536, "64 KiB"), (1 << 20, "1 MiB"), (3 << 29, "1.5 GiB")])
    func bytesAreFormattedForPeople(bytes: Int, text: String) {
        #expect(formatBytes(bytes) == text)
    }

    @Test func durationsRoundUpToMilliseconds() {
        #expect(Duration.seconds(2).milliseconds == 2000)
        #expect(Duration.microseconds(1).milliseconds == 1)
        #expect(Duration.zero.milliseconds == 0)
    }

    @Test func accessDefaultsGrantNothingRemote() {
        #expect(AccessFlags.sendReceive == [.localWrite])
        #expect(!AccessFlags.sendReceive.grantsRemoteAccess)
        #expect(AccessFlags.remoteRead.grantsRemoteAccess)
    }
}
