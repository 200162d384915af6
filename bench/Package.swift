// swift-tools-version: 6.0
// Benchmarks for sysmirror, in their own package so that the main build never pays for them.
// Run with bench/run: it builds sysmirror in release mode, then this harness, and prints the tables.
import PackageDescription

let package = Package(
    name: "sysmirror-bench",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "sysmirror", path: ".."),
        // For `--only loops`: the serving loop on SwiftNIO beside sysmirror's own (the version the main package uses).
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
    ],
    targets: [
        .executableTarget(
            name: "sysmirror-bench",
            dependencies: [
                .product(name: "SyscallDecoding", package: "sysmirror"),
                .product(name: "LinuxSystem", package: "sysmirror"),
                .product(name: "RemoteServices", package: "sysmirror"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: [.unsafeFlags(["-Ounchecked"])]
        )
    ]
)
