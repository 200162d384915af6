import Foundation
import SyscallDecoding
import Testing

@Suite("Names, addresses and log lines")
struct FormatTests {
    @Test("Open flags, access modes, *at flags and errno names as strace spells them")
    func names() {
        #expect(Names.openFlags(0) == "O_RDONLY")
        #expect(Names.openFlags(0o1101) == "O_WRONLY|O_CREAT|O_TRUNC")
        #expect(Names.openFlags(0o2204002) == "O_RDWR|O_NONBLOCK|O_DIRECTORY|O_CLOEXEC")
        #expect(Names.openFlags(0o20200002) == "O_RDWR|O_TMPFILE")
        #expect(Names.openFlags(0o4010000) == "O_RDONLY|O_SYNC")
        #expect(Names.accessMode(0) == "F_OK")
        #expect(Names.accessMode(6) == "R_OK|W_OK")
        #expect(Names.atFlags(0x1100, syscall: "newfstatat") == "AT_SYMLINK_NOFOLLOW|AT_EMPTY_PATH")
        #expect(Names.atFlags(0x200, syscall: "faccessat2") == "AT_EACCESS")
        #expect(Names.atFlags(0x8_0000_0000, syscall: "statx") == "0x800000000")
        #expect(Names.errno(2) == "ENOENT")
        #expect(Names.errno(111) == "ECONNREFUSED")
        #expect(Names.errno(999) == "E999")
    }

    @Test(
        "Socket addresses",
        arguments: [
            ([2, 0, 0x1f, 0x90, 127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0], "127.0.0.1:8080"),
            (
                [10, 0, 0, 80, 0, 0, 0, 0] + [0xfd, 0] + [UInt8](repeating: 0, count: 13) + [1, 0, 0, 0, 0],
                "[fd00::1]:80"
            ),
            (
                [10, 0, 0, 53, 0, 0, 0, 0] + [UInt8](repeating: 0, count: 10) + [
                    0xff, 0xff, 10, 96, 0, 10, 0, 0, 0, 0,
                ], "[::ffff:10.96.0.10]:53"
            ),
            (
                [10, 0, 0, 1, 0, 0, 0, 0] + [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1] + [
                    3, 0, 0, 0,
                ], "[2001:db8::1:0:0:1%3]:1"
            ),
            ([1, 0] + Array("/run/app.sock".utf8) + [0], "unix:/run/app.sock"),
            ([1, 0, 0] + Array("abstract".utf8), "unix:@abstract"),
            ([16, 0, 0, 0], "{family=16}"),
        ] as [([UInt8], String)])
    func socketAddresses(bytes: [UInt8], text: String) {
        #expect(SocketAddress(bytes)?.description == text)
    }

    @Test("Addresses too short for their family are refused")
    func shortAddresses() {
        #expect(SocketAddress([2, 0, 0, 80]) == nil)
        #expect(SocketAddress([10, 0, 0, 80, 0, 0, 0, 0]) == nil)
        #expect(SocketAddress([2]) == nil)
    }

    @Test("Text lines: results, errors, interruptions and notes")
    func textOutcomes() throws {
        let spec = try #require(SyscallTable.x86_64[.listen])
        let call = DecodedSyscall(spec: spec, values: [.integer(3), .integer(128)])
        func line(_ outcome: Outcome, route: Route = .remote, note: String? = nil) -> String {
            TraceFormat.text.line(
                TraceEvent(
                    time: 0, pid: 42, syscall: "listen", arguments: call, route: route, outcome: outcome,
                    durationNanos: 84_049, note: note))
        }
        #expect(line(.returned(0)) == "[pid 42] listen(3, 128) = 0 → remote 84.0µs\n")
        #expect(
            line(.failed(errno: 98))
                == "[pid 42] listen(3, 128) = -1 EADDRINUSE (Address already in use) → remote 84.0µs\n")
        #expect(line(.interrupted, route: .local) == "[pid 42] listen(3, 128) = ? <interrupted> → local 84.0µs\n")
        #expect(
            line(.failed(errno: 38), route: .denied, note: "why")
                == "[pid 42] listen(3, 128) = -1 ENOSYS (Function not implemented) → denied 84.0µs (why)\n")
    }

    @Test("JSON lines parse, escape control characters and keep paths that are not UTF-8 visible")
    func json() throws {
        let spec = try #require(SyscallTable.x86_64[.open])
        let path: [UInt8] = Array("/tmp/a\"b\n".utf8) + [0xff]
        let call = DecodedSyscall(spec: spec, values: [.string(path), .integer(0), .integer(0)])
        let event = TraceEvent(
            time: 1_795_742_747_123_456_789, pid: 9, syscall: "open", arguments: call, route: .notFound,
            outcome: .failed(errno: 2), durationNanos: 12_345)
        let line = TraceFormat.json.line(event)
        #expect(line.hasSuffix("}\n"))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(object["time"] as? String == "2026-11-27T01:25:47.123456Z")
        #expect(object["pid"] as? Int == 9)
        #expect(object["route"] as? String == "not_found")
        #expect(object["path"] as? String == "/tmp/a\"b\n\u{FFFD}")
        #expect(object["args"] as? String == #""/tmp/a\"b\n\xff", O_RDONLY"#)
        #expect(object["result"] as? Int == -1)
        #expect(object["errno"] as? String == "ENOENT")
        #expect(object["duration_us"] as? Double == 12.3)
    }

    @Test("Timestamps across leap years and the epoch")
    func timestamps() {
        func text(_ seconds: UInt64) -> String {
            TraceFormat.json.line(
                TraceEvent(
                    time: seconds * 1_000_000_000, pid: 1, syscall: "x", arguments: nil, route: .local,
                    outcome: .continued, durationNanos: 0))
        }
        #expect(text(0).contains("1970-01-01T00:00:00.000000Z"))
        #expect(text(951_782_400).contains("2000-02-29T00:00:00.000000Z"))
        #expect(text(4_107_542_399).contains("2100-02-28T23:59:59.000000Z"))
    }
}

@Suite("Socket addresses as the kernel takes them")
struct SocketAddressTests {
    @Test("Encoded and decoded again, an address is the same; short ones are not addresses")
    func roundTrip() {
        let addresses: [SocketAddress] = [
            .inet(address: [10, 96, 0, 20], port: 8080),
            .inet6(address: [0xfd, 0] + [UInt8](repeating: 0, count: 13) + [1], port: 443, scope: 3),
            .unix(path: Array("/run/agent.sock".utf8), abstract: false),
            .unix(path: Array("name".utf8), abstract: true),
        ]
        for address in addresses { #expect(SocketAddress(address.bytes) == address, "\(address)") }
        #expect(SocketAddress.inet(address: [1, 2, 3, 4], port: 1).bytes.count == 16)
        #expect(SocketAddress(Array(SocketAddress.inet(address: [1, 2, 3, 4], port: 1).bytes.prefix(8))) == nil)
    }

    @Test("Loopback, wildcard and mapped addresses")
    func kinds() {
        #expect(SocketAddress.loopback(family: AF_INET, port: 9).description == "127.0.0.1:9")
        #expect(SocketAddress.loopback(family: AF_INET6, port: 9).description == "[::1]:9")
        #expect(SocketAddress.inet(address: [0, 0, 0, 0], port: 80).connectable.description == "127.0.0.1:80")
        #expect(SocketAddress.inet6(address: [UInt8](repeating: 0, count: 16), port: 80, scope: 0).connectable.description == "[::1]:80")
        #expect(SocketAddress.inet(address: [10, 0, 0, 1], port: 80).connectable.description == "10.0.0.1:80")
        #expect(SocketAddress.inet(address: [127, 0, 0, 9], port: 1).isLoopback)
        #expect(!SocketAddress.inet(address: [10, 0, 0, 1], port: 1).isLoopback)
        let mapped = SocketAddress.inet(address: [10, 250, 0, 2], port: 5000).seen(byFamily: AF_INET6)
        #expect(mapped?.description == "[::ffff:10.250.0.2]:5000")
        #expect(mapped?.isLoopback == false)
        #expect(SocketAddress.inet(address: [127, 0, 0, 1], port: 1).seen(byFamily: AF_INET6)?.isLoopback == true)
        #expect(SocketAddress.loopback(family: AF_INET6).seen(byFamily: AF_INET) == nil)
    }
}
