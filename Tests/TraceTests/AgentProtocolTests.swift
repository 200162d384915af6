import AgentProtocol
import Foundation
import Testing

/// A raw client on the agent's socket: sends any bytes, reads whole frames back.
final class RawConnection {
    let fd: Int32

    init(_ path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else { throw FixtureError(description: "connect \(path): \(errno)") }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) { _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } }
    func send(_ message: Message) { send(Frame.encode(message)) }

    private var buffer: [UInt8] = []

    /// The next message, or nil once the agent has closed the connection (or after 10 s of silence).
    func receive() -> Message? {
        while true {
            if case .message(let message, let consumed)? = try? Frame.parse(buffer) {
                buffer.removeFirst(consumed)
                return message
            }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let count = read(fd, &chunk, chunk.count)
            guard count > 0 else { return nil }
            buffer.append(contentsOf: chunk[..<count])
        }
    }

    /// Opens a session with the right token.
    func handshake(_ token: String) -> Message? {
        send(.hello(version: protocolVersion, token: Array(token.utf8)))
        return receive()
    }
}

/// The agent on its own: bad input of every kind never crashes it or disturbs another session.
@Suite("Agent under bad input")
final class AgentRobustnessTests {
    let fixtures = Fixtures.shared
    let root: URL
    let socket: String
    let token = "robust-token"
    let tokenFile: String
    let agent: Process
    let log: String

    init() throws {
        let name = "robust-\(UUID().uuidString.prefix(8))"
        root = fixtures.directory.appendingPathComponent(name)
        try FileManager.default.createDirectory(
            at: root.appendingPathComponent("data"), withIntermediateDirectories: true)
        try "content\n".write(to: root.appendingPathComponent("data/file"), atomically: false, encoding: .utf8)
        mkfifo(root.appendingPathComponent("data/fifo").path, 0o644)
        socket = fixtures.path("\(name).sock")
        tokenFile = fixtures.path("\(name).token")
        log = fixtures.path("\(name).log")
        try token.write(toFile: tokenFile, atomically: false, encoding: .utf8)
        agent = try PodStandIn.start(
            [
                // A suite instance may wait its turn longer than the default idle timeout on a loaded machine.
                fixtures.sysmirror, "agent", "--listen", "unix:\(socket)", "--root", root.path, "--token-file",
                tokenFile, "--idle-timeout", "600",
            ],
            log: log)
        try PodStandIn.waitUntil("the agent's socket") { FileManager.default.fileExists(atPath: socket) }
    }

    deinit {
        kill(agent.processIdentifier, SIGKILL)
        agent.waitUntilExit()
        for path in [root.path, socket, tokenFile, log] { try? FileManager.default.removeItem(atPath: path) }
    }

    func stat(_ connection: RawConnection, id: UInt32, _ path: String) -> Message? {
        connection.send(.request(id: id, .stat(path: Array(path.utf8), followSymlinks: true)))
        return connection.receive()
    }

    @Test func theSocketIsPrivate() throws {
        let attributes = try FileManager.default.attributesOfItem(atPath: socket)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
    }

    @Test func garbageTruncatedAndOversizedFramesEndOnlyTheirOwnSession() throws {
        let good = try RawConnection(socket)
        guard case .welcome? = good.handshake(token) else { Issue.record("no welcome"); return }

        let http = try RawConnection(socket)
        http.send(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        guard case .protocolError(let reason)? = http.receive() else { Issue.record("no protocol error"); return }
        #expect(reason.contains("frame announced"))
        #expect(http.receive() == nil)

        let oversized = try RawConnection(socket)
        _ = oversized.handshake(token)
        oversized.send([0x7F, 0xFF, 0xFF, 0xFF, 0x12])
        guard case .protocolError? = oversized.receive() else { Issue.record("no protocol error"); return }
        #expect(oversized.receive() == nil)

        let truncated = try RawConnection(socket)
        truncated.send(Array(Frame.encode(.hello(version: protocolVersion, token: Array(token.utf8))).prefix(7)))
        // ...and hangs up mid-frame.

        let garbled = try RawConnection(socket)
        _ = garbled.handshake(token)
        garbled.send(Frame.encode(.response(id: 3, .done)))  // clients do not send responses
        guard case .protocolError? = garbled.receive() else { Issue.record("no protocol error"); return }

        let early = try RawConnection(socket)
        early.send(.request(id: 1, .environment))
        guard case .protocolError(let text)? = early.receive() else { Issue.record("no protocol error"); return }
        #expect(text.contains("expected hello"))

        // The first session never noticed.
        guard case .response(id: 9, .metadata(let metadata))? = stat(good, id: 9, "/data/file") else {
            Issue.record("the good session was disturbed")
            return
        }
        #expect(metadata.size == 8)
        #expect(agent.isRunning)
    }

    @Test func anotherVersionIsRefusedNamingBoth() throws {
        let connection = try RawConnection(socket)
        connection.send(.hello(version: 99, token: Array(token.utf8)))
        guard case .refused(let version, let reason)? = connection.receive() else {
            Issue.record("not refused"); return
        }
        #expect(version == protocolVersion)
        #expect(reason.contains("version 99") && reason.contains("version \(protocolVersion)"))
        #expect(connection.receive() == nil)
    }

    @Test func badRequestsGetErrorsAndTheSessionGoesOn() throws {
        let connection = try RawConnection(socket)
        guard case .welcome? = connection.handshake(token) else { Issue.record("no welcome"); return }
        connection.send(.unknown(type: 0x7E, id: 5))
        #expect(
            connection.receive()
                == .response(id: 5, .failure(errno: ENOSYS, message: "this agent does not know message type 0x7e")))
        connection.send(.request(id: 6, .open(path: Array("/data/file\0/etc/passwd".utf8), flags: 0, mode: 0)))
        #expect(
            connection.receive() == .response(id: 6, .failure(errno: EINVAL, message: "the path contains a NUL byte")))
        // A FIFO would block an open for reading: refused before it is opened.
        connection.send(.request(id: 7, .open(path: Array("/data/fifo".utf8), flags: 0, mode: 0)))
        guard case .response(id: 7, .failure(errno: ENXIO, _))? = connection.receive() else {
            Issue.record("the FIFO was not refused")
            return
        }
        connection.send(.request(id: 8, .open(path: Array("/data".utf8), flags: O_DIRECTORY, mode: 0)))
        guard case .response(id: 8, .opened(let metadata))? = connection.receive() else {
            Issue.record("no directory"); return
        }
        #expect(metadata.isDirectory)
        var entries: [UInt8] = []
        while case .chunk(id: 8, let bytes)? = connection.receive() { entries.append(contentsOf: bytes) }
        #expect(
            Set(try DirectoryEntryCodec.decode(entries).map { String(decoding: $0.name, as: UTF8.self) }) == [
                "file", "fifo",
            ])
        guard case .response(id: 10, .metadata)? = stat(connection, id: 10, "/../../data/file") else {
            Issue.record("the session did not go on")
            return
        }
    }

    @Test func hundredsOfRequestsInFlightOnOneConnection() throws {
        let connection = try RawConnection(socket)
        guard case .welcome? = connection.handshake(token) else { Issue.record("no welcome"); return }
        var frames: [UInt8] = []
        for id in 1...500 {
            let path = id % 2 == 0 ? "/data/file" : "/data/missing-\(id)"
            Frame.encode(.request(id: UInt32(id), .stat(path: Array(path.utf8), followSymlinks: true)), into: &frames)
        }
        connection.send(frames)
        var answered = Set<UInt32>()
        for _ in 1...500 {
            switch connection.receive() {
            case .response(let id, .metadata)? where id % 2 == 0: answered.insert(id)
            case .response(let id, .failure(errno: ENOENT, _))? where id % 2 == 1: answered.insert(id)
            case let other: Issue.record("unexpected \(String(describing: other))")
            }
        }
        #expect(answered.count == 500)
    }

    @Test func theAgentExitsAfterItsIdleTimeout() throws {
        let socket = fixtures.path("idle-\(UUID().uuidString.prefix(8)).sock")
        let started = Date()
        let outcome = try Run.process(
            [
                fixtures.sysmirror, "agent", "--listen", "unix:\(socket)", "--root", root.path, "--token-file",
                tokenFile,
                "--idle-timeout", "1",
            ], timeout: 20)
        #expect(outcome.status == 0)
        #expect(Date().timeIntervalSince(started) < 10)
        #expect(outcome.stderr.contains("no session for 1 s: exiting"))
        #expect(!FileManager.default.fileExists(atPath: socket))
    }

    @Test func aRootTargetServesItsEnvironmentFile() throws {
        let name = "envfile-\(UUID().uuidString.prefix(8))"
        let environment = try fixtures.readableFile(
            "\(name).env", "# the pod's variables\nexport DB_HOST=db.pod\n\nGREETING=hello = world\nnot a variable\n")
        let socket = fixtures.path("\(name).sock")
        let agent = try PodStandIn.start(
            [
                fixtures.sysmirror, "agent", "--listen", "unix:\(socket)", "--root", root.path, "--env-file",
                environment,
                "--token-file", tokenFile,
            ], log: nil)
        defer {
            kill(agent.processIdentifier, SIGKILL)
            agent.waitUntilExit()
            for path in [environment, socket] { unlink(path) }
        }
        try PodStandIn.waitUntil("the agent's socket") { FileManager.default.fileExists(atPath: socket) }
        let outcome = try Run.process(
            [
                fixtures.sysmirror, "trace", "--quiet", "--agent", "unix:\(socket)", "--token-file", tokenFile, "--",
                "/bin/busybox", "sh", "-c", "echo $DB_HOST; echo $GREETING; cat /data/file",
            ])
        #expect(outcome.stdout == "db.pod\nhello = world\ncontent\n", "\(outcome.stderr)")
    }

    @Test func anAgentOnTCPServesATraceOverTCP() throws {
        let port = try Self.freePort()
        let agent = try PodStandIn.start(
            [fixtures.sysmirror, "agent", "--listen", "\(port)", "--root", root.path, "--token-file", tokenFile],
            log: nil)
        defer {
            kill(agent.processIdentifier, SIGKILL)
            agent.waitUntilExit()
        }
        var outcome = Outcome(status: -1, stdout: "", stderr: "")
        try PodStandIn.waitUntil("the agent on TCP") {
            outcome =
                (try? Run.process(
                    [
                        fixtures.sysmirror, "trace", "--agent", "127.0.0.1:\(port)", "--token-file", tokenFile,
                        "--quiet",
                        "--", "/bin/busybox", "cat", "/data/file",
                    ])) ?? outcome
            return outcome.status == 0
        }
        #expect(outcome.stdout == "content\n")
    }

    /// A TCP port nobody listens on now, from the kernel's ephemeral range.
    static func freePort() throws -> Int {
        let fd = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(fd, pointer, length) == 0 && getsockname(fd, pointer, &length) == 0
            }
        }
        guard bound else { throw FixtureError(description: "no free port: \(errno)") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    @Test(
        "Agent usage errors are clear",
        arguments: [
            (["--listen", "unix:/tmp/x.sock", "--token-file", "/dev/null"], "Name the target"),
            (["--listen", "70000", "--root", "/", "--token-file", "/dev/null"], "port must be a number"),
            (["--listen", "1234", "--pid", "1", "--root", "/", "--token-file", "/dev/null"], "give one of them"),
            (["--listen", "1234", "--root", "/", "--token-file", "/nonexistent"], "cannot use the token file"),
            (
                ["--listen", "1234", "--pid", "999999999", "--token-file", "/etc/hostname"],
                "cannot open the target's root"
            ),
        ])
    func usage(arguments: [String], message: String) throws {
        let outcome = try Run.process([fixtures.sysmirror, "agent"] + arguments)
        #expect(outcome.status != 0)
        #expect(outcome.stderr.contains(message), "\(outcome.stderr)")
    }
}
