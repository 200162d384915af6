// swift-tools-version: 6.0
// Benchmarks for sysmirror, in their own package so that the main build never pays for them.
// Run with bench/run: it builds sysmirror in release mode, then this harness, and prints the tables.
import PackageDescription

let package = Package(
    name: "sysmirror-bench",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "sysmirror", path: "..")
    ],
    targets: [
        .executableTarget(
            name: "sysmirror-bench",
            dependencies: [
                .product(name: "SyscallDecoding", package: "sysmirror"),
                .product(name: "LinuxSystem", package: "sysmirror"),
            ],
            swiftSettings: [.unsafeFlags(["-Ounchecked"])]
        )
    ]
)
