// The false positive that tsan.supp suppresses, without DMAIO: a task stores its continuation
// under a pthread mutex; a plain thread takes it under the mutex and resumes it, once. Correct
// Swift; ThreadSanitizer on Linux still reports a data race in withUnsafeThrowingContinuation
// when the resume comes before the task suspended.
//
//   swiftc -sanitize=thread -g continuation-handoff.swift -o handoff && ./handoff
//   TSAN_OPTIONS=suppressions=tsan.supp ./handoff      # no report
import Glibc
import Dispatch

final class Box: @unchecked Sendable {
    var mutex = pthread_mutex_t()
    var continuations: [UnsafeContinuation<Bool, any Error>] = []
    init() { pthread_mutex_init(&mutex, nil) }
}
let box = Box()

func waitForThread() async throws -> Bool {
    try await withTaskCancellationHandler {
        try await withUnsafeThrowingContinuation { (c: UnsafeContinuation<Bool, any Error>) in
            pthread_mutex_lock(&box.mutex)
            box.continuations.append(c)
            pthread_mutex_unlock(&box.mutex)
        }
    } onCancel: {}
}

var thread = pthread_t()
pthread_create(&thread, nil, { _ in
    while true {
        pthread_mutex_lock(&box.mutex)
        let cs = box.continuations
        box.continuations = []
        pthread_mutex_unlock(&box.mutex)
        for c in cs { c.resume(returning: true) }
        sched_yield()
    }
}, nil)

let total = try await withThrowingTaskGroup(of: Int.self) { group in
    for _ in 0..<16 {
        group.addTask { var n = 0; for _ in 0..<200 { if try await waitForThread() { n += 1 } }; return n }
    }
    return try await group.reduce(0, +)
}
print("total", total)
