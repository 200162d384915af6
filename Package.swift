// swift-tools-version: 6.0
import PackageDescription

/// SwiftNIO, for the agent's server and its framing.
let nio: [Target.Dependency] = [
    .product(name: "NIOCore", package: "swift-nio"),
    .product(name: "NIOPosix", package: "swift-nio"),
    .product(name: "Logging", package: "swift-log"),
]

let package = Package(
    name: "sysmirror",
    platforms: [.macOS(.v15)],  // Linux only in practice; the platform line keeps SwiftPM's availability checks quiet.
    products: [
        .executable(name: "sysmirror", targets: ["sysmirror"]),
        // For bench/: the log formats are measured on their own there, and sessions' sizes read from /proc.
        .library(name: "SyscallDecoding", targets: ["SyscallDecoding"]),
        .library(name: "LinuxSystem", targets: ["LinuxSystem"]),
        // For bench/: the serving loop's relay, measured beside SwiftNIO's.
        .library(name: "RemoteServices", targets: ["RemoteServices"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.0.0"),
    ],
    targets: [
        // libseccomp, from Debian's libseccomp-dev: compiles the filter for every ABI the CPU can enter.
        .systemLibrary(
            name: "CSeccomp",
            pkgConfig: "libseccomp",
            providers: [.apt(["libseccomp-dev"])]
        ),
        // What Swift cannot express: ioctl numbers, variadic syscalls, and the fork-to-exec child.
        .target(name: "CSysmirror"),
        // One choke point for the syscalls sysmirror makes, and one error type.
        .target(
            name: "LinuxSystem",
            dependencies: [
                "CSysmirror", "SyscallDecoding",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // Pure: syscall tables, argument decoding, socket addresses, and the trace log's formats.
        .target(name: "SyscallDecoding"),
        // Pure: which intercepted calls run locally, remotely, or fail; file rules; the environment merge.
        .target(name: "Routing", dependencies: ["SyscallDecoding"]),
        // Pure: DNS messages as far as sysmirror reads and writes them, the pod's search list, kept answers.
        .target(name: "NameResolution"),
        // Pure: the supervisor↔agent wire protocol (frames, messages, their codec), and what agents of one
        // pod say to each other.
        .target(name: "AgentProtocol", dependencies: ["NameResolution"]),
        // Pure: incoming traffic's policy and parsing (netfilter rules, copied packets put back in order,
        // HTTP framing and the steal filter, who may share a stolen port and who gets a request).
        .target(name: "Incoming", dependencies: ["AgentProtocol"]),
        // The config file (YAML or JSON, one Codable model) and how it turns into rules.
        .target(
            name: "Configuration",
            dependencies: ["Routing", .product(name: "Yams", package: "Yams")]
        ),
        // Both ends of the link: addresses and tokens; the supervisor's client, its stream connections and
        // socket channel (plain sockets on the serving event loop, no NIO).
        .target(
            name: "AgentLink",
            dependencies: [
                "AgentProtocol", "CSysmirror", "LinuxSystem", "SyscallDecoding",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // `trace --target`: the agent in a Kubernetes pod through the user's kubectl. Pure decisions
        // (targets, pod selection, what is asked of the cluster, failures) beside the kubectl plumbing.
        .target(
            name: "Kubernetes",
            dependencies: [
                "AgentLink", "CSysmirror", "LinuxSystem",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // `sysmirror agent`: serves sessions from the pod (files inside the target's root, its environment).
        .target(
            name: "Agent",
            dependencies: [
                "AgentProtocol", "AgentLink", "CSysmirror", "Incoming", "LinuxSystem", "NameResolution", "SyscallDecoding",
                .product(name: "SystemPackage", package: "swift-system"),
            ] + nio
        ),
        // The kernel's side of an intercepted call: the listener and its answers, the notification, the
        // caller's memory, descriptors and process tree. Both the loop and the remote services use it.
        .target(
            name: "UserNotification",
            dependencies: [
                "CSysmirror", "LinuxSystem", "Routing", "SyscallDecoding",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // Serving the calls routed to the pod: remote files, outgoing sockets, incoming traffic, on the
        // serving event loop. Called by the notification loop; it calls nothing above it.
        .target(
            name: "RemoteServices",
            dependencies: [
                "CSysmirror", "LinuxSystem", "SyscallDecoding", "Routing", "AgentProtocol", "AgentLink",
                "UserNotification", "NameResolution",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // Plumbing: the filter, spawning, the notification loop, the trace log, the session.
        .target(
            name: "Supervisor",
            dependencies: [
                "CSeccomp", "CSysmirror", "LinuxSystem", "SyscallDecoding", "Routing", "AgentProtocol", "AgentLink",
                "UserNotification", "RemoteServices",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .executableTarget(
            name: "sysmirror",
            dependencies: [
                "Supervisor", "SyscallDecoding", "Agent", "AgentLink", "AgentProtocol", "Configuration", "Routing", "Kubernetes",
                "Incoming",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(name: "SyscallDecodingTests", dependencies: ["SyscallDecoding"]),
        .testTarget(name: "LinuxSystemTests", dependencies: ["LinuxSystem"]),
        .testTarget(name: "RoutingTests", dependencies: ["Routing", "Configuration"]),
        .testTarget(name: "AgentProtocolTests", dependencies: ["AgentProtocol", "NameResolution"]),
        .testTarget(name: "NameResolutionTests", dependencies: ["NameResolution"]),
        .testTarget(name: "AgentLinkTests", dependencies: ["AgentLink"]),
        .testTarget(name: "IncomingTests", dependencies: ["Incoming", "AgentProtocol"]),
        .testTarget(name: "KubernetesTests", dependencies: ["Kubernetes"]),
        .testTarget(
            name: "SupervisorTests",
            dependencies: [
                "Supervisor", "RemoteServices", "UserNotification", "CSeccomp", "CSysmirror", "LinuxSystem",
                .product(name: "Logging", package: "swift-log"),
            ]),
        // End to end: the built `sysmirror` binary runs real programs as an unprivileged user.
        .testTarget(
            name: "TraceTests",
            dependencies: ["sysmirror", "AgentProtocol", "LinuxSystem"],
            exclude: ["README.md"]
        ),
    ]
)
