// swift-tools-version:6.1
//
// DMAIO: Ulrich Drepper's asynchronous zero-copy network API (dma_alloc, dma_assoc,
// sio_reserve, sio_release, event channels, aio_send, aio_recv) on RDMA verbs.
//
// Layers, bottom to top (see README.md):
//   CRDMA       system-library module over libibverbs + librdmacm (one shim header)
//   RDMAVerbs   safe Swift verbs layer: device, context, PD, MR, CQ, QP, SRQ, rdma_cm
//   DMAIO       the proposal's API: DMA areas, event channels, zero-copy aio send/receive
//   CDMAIO      the C ABI's header (dmaio.h), with the proposal's own signatures
//   DMAIOC      its implementation on DMAIO: the `dmaio` shared library
//   examples/   tools built on the proposal's API

import PackageDescription

let package = Package(
    name: "DMAIO",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "RDMAVerbs", targets: ["RDMAVerbs"]),
        .library(name: "DMAIO", targets: ["DMAIO"]),
        .library(name: "dmaio", type: .dynamic, targets: ["DMAIOC"]),
        .executable(name: "pingpong", targets: ["pingpong"]),
        .executable(name: "stream", targets: ["stream"]),
        .executable(name: "c-pingpong", targets: ["c-pingpong"]),
        .executable(name: "c-echo", targets: ["c-echo"]),
        .executable(name: "echo", targets: ["echo"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CRDMA",
            path: "Sources/CRDMA",
            pkgConfig: "libibverbs",
            providers: [.apt(["libibverbs-dev", "librdmacm-dev"])]
        ),
        .target(
            name: "RDMAVerbs",
            dependencies: [
                "CRDMA",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            path: "Sources/RDMAVerbs"
        ),
        .target(
            name: "DMAIO",
            dependencies: [
                "RDMAVerbs", "CRDMA",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            path: "Sources/DMAIO",
            // `ReceivedBuffer.bytes` is a `RawSpan` tied to the buffer's lifetime, as
            // swift-system's `IORing` buffers are.
            swiftSettings: [.enableExperimentalFeature("Lifetimes")]
        ),
        .target(
            name: "CDMAIO",
            path: "Sources/CDMAIO"
        ),
        .target(
            name: "DMAIOC",
            dependencies: ["DMAIO", "RDMAVerbs", "CDMAIO", "CRDMA"],
            path: "Sources/DMAIOC"
        ),
        .executableTarget(
            name: "c-pingpong",
            dependencies: ["CDMAIO", "DMAIOC"],
            path: "examples/c-pingpong",
            cSettings: [.unsafeFlags(["-std=c11", "-Wall", "-Wextra", "-Werror"])]
        ),
        .executableTarget(
            name: "c-echo",
            dependencies: ["CDMAIO", "DMAIOC"],
            path: "examples/c-echo",
            cSettings: [.unsafeFlags(["-std=c11", "-Wall", "-Wextra", "-Werror"])]
        ),
        .executableTarget(
            name: "dmaio-c-tests",
            dependencies: ["CDMAIO", "DMAIOC"],
            path: "Tests/CABITests",
            cSettings: [.unsafeFlags(["-std=c11", "-Wall", "-Wextra", "-Werror"])]
        ),
        .target(
            name: "ExampleSupport",
            dependencies: ["RDMAVerbs"],
            path: "examples/ExampleSupport"
        ),
        .executableTarget(
            name: "stream",
            dependencies: [
                "DMAIO", "RDMAVerbs", "ExampleSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "examples/stream"
        ),
        .executableTarget(
            name: "echo",
            dependencies: [
                "DMAIO", "ExampleSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "examples/echo"
        ),
        .executableTarget(
            name: "pingpong",
            dependencies: [
                "DMAIO", "RDMAVerbs", "ExampleSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "examples/pingpong"
        ),
        .executableTarget(
            name: "dmaio-reliability",
            dependencies: [
                "DMAIO", "RDMAVerbs", "ExampleSupport", "CProcessMemory",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            path: "Tests/Reliability"
        ),
        .target(
            name: "CProcessMemory",
            path: "Tests/CProcessMemory"
        ),
        .testTarget(
            name: "RDMAVerbsUnitTests",
            dependencies: [
                "RDMAVerbs", "CRDMA",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            path: "Tests/RDMAVerbsUnitTests"
        ),
        .target(
            name: "CMallocCounter",
            path: "Tests/CMallocCounter"
        ),
        .testTarget(
            name: "DMAIOUnitTests",
            dependencies: ["DMAIO", "ExampleSupport"],
            path: "Tests/DMAIOUnitTests"
        ),
        .testTarget(
            name: "RDMAVerbsIntegrationTests",
            dependencies: ["RDMAVerbs", "DMAIO", "CRDMA", "CMallocCounter", "ExampleSupport"],
            path: "Tests/RDMAVerbsIntegrationTests"
        ),
    ]
)
