import CSysmirror
import Foundation
import LinuxSystem
import Testing

/// The protocols editors speak to debuggers, as far as DebuggerTests drives them: DAP (delve, debugpy),
/// gdb/MI, and Node's inspector (a WebSocket). Each client reads from a `ByteStream`: a TCP connection to
/// loopback in the developer's namespace, or a traced debugger's standard input and output.

struct ProtocolError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Writes all of `bytes` to a socket; a peer that has gone is an error (EPIPE), not a SIGPIPE.
func sendAll(_ bytes: [UInt8], to socket: Int32, _ what: String) throws {
    var sent = 0
    while sent < bytes.count {
        let n = bytes[sent...].withUnsafeBytes { Glibc.send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard n > 0 else { throw ProtocolError("\(what): \(String(cString: strerror(errno)))") }
        sent += n
    }
}

protocol ByteStream: AnyObject {
    func send(_ bytes: [UInt8]) throws
    /// The bytes that have come, waiting for some until `deadline`; empty at the end of the stream.
    func receive(before deadline: Date) throws -> [UInt8]
}

/// Lines and counted bytes from a stream.
final class StreamReader {
    let stream: ByteStream
    private var buffer: [UInt8] = []
    private var ended = false

    init(_ stream: ByteStream) { self.stream = stream }

    /// The next line without its end (`\n` or `\r\n`); nil at the end of the stream.
    func line(before deadline: Date) throws -> String? {
        while true {
            if let end = buffer.firstIndex(of: 10) {
                var line = Array(buffer[..<end])
                buffer.removeFirst(end + 1)
                if line.last == 13 { line.removeLast() }
                return String(decoding: line, as: UTF8.self)
            }
            guard try fill(before: deadline) else { return nil }
        }
    }

    func bytes(_ count: Int, before deadline: Date) throws -> [UInt8] {
        while buffer.count < count {
            guard try fill(before: deadline) else { throw ProtocolError("the stream ended \(count) bytes short") }
        }
        defer { buffer.removeFirst(count) }
        return Array(buffer.prefix(count))
    }

    /// Everything to the end of the stream.
    func rest(before deadline: Date) throws -> [UInt8] {
        while try fill(before: deadline) {}
        defer { buffer.removeAll() }
        return buffer
    }

    private func fill(before deadline: Date) throws -> Bool {
        guard !ended else { return false }
        let more = try stream.receive(before: deadline)
        if more.isEmpty { ended = true }
        buffer += more
        return !more.isEmpty
    }
}

/// A TCP connection to 127.0.0.1:PORT in a network namespace the test made (the developer's, where the
/// traced debugger listens): the socket is made with this thread inside it, then connected from here. It
/// belongs to nobody, as an editor's socket belongs to the user whose debugger it reaches: delve refuses
/// loopback connections from other users (its --only-same-user, read from /proc/net/tcp).
final class LoopbackConnection: ByteStream {
    let fd: Int32

    init(port: UInt16, namespace: String, timeout: TimeInterval = 30) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let fd = try Self.socket(in: namespace)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
            let result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            if result == 0 {
                self.fd = fd
                return
            }
            let error = errno
            close(fd)
            // Refused until the debugger listens.
            guard error == ECONNREFUSED, Date() < deadline else {
                throw ProtocolError("connect to 127.0.0.1:\(port) in \(namespace): \(String(cString: strerror(error)))")
            }
            usleep(20_000)
        }
    }

    deinit { close(fd) }

    func shutdown() { _ = Glibc.shutdown(fd, Int32(SHUT_RDWR)) }

    /// A socket of `namespace`, owned by nobody: setns and setfsuid change only the calling thread, and are
    /// undone before returning.
    private static func socket(in namespace: String) throws -> Int32 {
        let own = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
        let target = open("/run/netns/\(namespace)", O_RDONLY | O_CLOEXEC)
        defer {
            close(own)
            close(target)
        }
        guard own >= 0, target >= 0, sysm_setns(target, GNU.newNetworkNamespace) == 0 else {
            throw ProtocolError("cannot enter the namespace \(namespace): \(String(cString: strerror(errno)))")
        }
        let ownUser = setfsuid(65534)  // a socket's owner is its maker's file-system uid
        let fd = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        let made = errno
        _ = setfsuid(uid_t(ownUser))
        precondition(sysm_setns(own, GNU.newNetworkNamespace) == 0, "could not return to the test's own namespace")
        guard fd >= 0 else { throw ProtocolError("socket: \(String(cString: strerror(made)))") }
        return fd
    }

    /// glibc's setfsuid (a plain system call, for this thread only), which Swift's Glibc module leaves out.
    private static let setfsuid: @convention(c) (uid_t) -> Int32 = unsafeBitCast(
        dlsym(UnsafeMutableRawPointer(bitPattern: 0), "setfsuid"), to: (@convention(c) (uid_t) -> Int32).self)

    func send(_ bytes: [UInt8]) throws { try sendAll(bytes, to: fd, "127.0.0.1") }

    func receive(before deadline: Date) throws -> [UInt8] {
        var poll = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while true {
            let left = Int32(max(0, deadline.timeIntervalSinceNow) * 1000)
            let ready = Glibc.poll(&poll, 1, left)
            if ready > 0 { break }
            if ready == 0 { throw ProtocolError("nothing came on 127.0.0.1 in time") }
            guard errno == EINTR else { throw ProtocolError("poll: \(String(cString: strerror(errno)))") }
        }
        var buffer = [UInt8](repeating: 0, count: 65536)
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n >= 0 else { throw ProtocolError("recv: \(String(cString: strerror(errno)))") }
        return Array(buffer.prefix(n))
    }

    /// An HTTP/1.1 GET answered with a JSON body (the inspector's /json/list).
    static func getJSON(port: UInt16, path: String, namespace: String) throws -> Any {
        let connection = try LoopbackConnection(port: port, namespace: namespace)
        try connection.send(Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\n\r\n".utf8))
        let reader = StreamReader(connection)
        let deadline = Date().addingTimeInterval(10)
        var length = 0
        while let line = try reader.line(before: deadline), !line.isEmpty {
            let parts = line.split(separator: ":", maxSplits: 1)
            if parts.count == 2, parts[0].lowercased() == "content-length" {
                length = Int(parts[1].trimmingCharacters(in: .whitespaces)) ?? 0
            }
        }
        return try JSONSerialization.jsonObject(with: Data(try reader.bytes(length, before: deadline)))
    }
}

/// `sysmirror trace` as nobody in the pod stand-in's developer namespace, left running, with its standard
/// input and output in the test's hands: a debugger under trace, or a program a debugger attaches to.
final class TracedSession: ByteStream, @unchecked Sendable {  // the output is kept under `condition`
    let process = Process()
    /// Our end of the session's standard input: a socket, so that writing to a session that has ended fails
    /// with EPIPE (MSG_NOSIGNAL) instead of killing the test runner with SIGPIPE.
    private let input: Int32
    private let condition = NSCondition()
    private var output: [UInt8] = []
    private var outputEnded = false
    private var consumed = 0
    private let errors = Box<Data>()
    private let errorsRead = DispatchSemaphore(value: 0)
    let log: String

    /// `terminal`: in a terminal of its own (`script`), whose input is what `send` writes: Ctrl-C is byte 3.
    init(pod: PodStandIn, _ program: [String], options: [String] = [], home: String, terminal: Bool = false) throws {
        let fixtures = Fixtures.shared
        log = fixtures.path("trace-\(UUID().uuidString).log")
        var command =
            [
                "ip", "netns", "exec", pod.developerNamespace, "setpriv", "--reuid=65534", "--regid=65534",
                "--clear-groups", "--inh-caps=-all", "--", fixtures.sysmirror, "trace", "--log", log, "--agent",
                "unix:\(pod.socket)", "--token-file", pod.tokenFile,
            ] + options + ["--"] + program
        if terminal {
            let quoted = command.map { "'" + $0.replacingOccurrences(of: "'", with: #"'\''"#) + "'" }
            command = ["script", "-qec", quoted.joined(separator: " "), "/dev/null"]
        }
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [fixtures.path("unblocked")] + command
        process.currentDirectoryURL = fixtures.directory
        var environment = ProcessInfo.processInfo.environment
        environment["PATH"] = "/usr/local/bin:/usr/bin:/bin"
        environment["HOME"] = home  // debuggers keep their settings there; nobody cannot write root's
        environment["XDG_CONFIG_HOME"] = home
        process.environment = environment
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw ProtocolError("socketpair: \(String(cString: strerror(errno)))")
        }
        input = pair[0]
        let theirs = FileHandle(fileDescriptor: pair[1], closeOnDealloc: true)
        let output = Pipe()
        let errorPipe = Pipe()
        process.standardInput = theirs
        process.standardOutput = output
        process.standardError = errorPipe
        try process.run()
        try theirs.close()
        DispatchQueue.global().async { [self] in
            let handle = output.fileHandleForReading
            while true {
                let data = handle.availableData
                condition.withLock {
                    if data.isEmpty { outputEnded = true } else { self.output += data }
                    condition.broadcast()
                }
                if data.isEmpty { break }
            }
        }
        DispatchQueue.global().async { [errors, errorsRead] in
            errors.value = errorPipe.fileHandleForReading.readDataToEndOfFile()
            errorsRead.signal()
        }
    }

    deinit {
        stop(after: 0)
        close(input)
    }

    private func stop(after timeout: TimeInterval) {
        guard process.processIdentifier != 0 else { return }  // never started
        for (signal, grace) in [(0, timeout), (SIGTERM, 5), (SIGKILL, 0)] {
            if signal != 0 && process.isRunning { kill(process.processIdentifier, signal) }
            let deadline = Date().addingTimeInterval(grace)
            while process.isRunning && Date() < deadline { usleep(10_000) }
        }
        process.waitUntilExit()
    }

    func send(_ bytes: [UInt8]) throws { try sendAll(bytes, to: input, "the session's input") }

    func receive(before deadline: Date) throws -> [UInt8] {
        try condition.withLock {
            while consumed == output.count && !outputEnded {
                guard condition.wait(until: deadline) else {
                    throw ProtocolError("the traced session said nothing in time")
                }
            }
            defer { consumed = output.count }
            return Array(output[consumed...])
        }
    }

    /// Waits until the output holds `text`; returns the output so far.
    func waitForOutput(containing text: String, timeout: TimeInterval = 30) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        return try condition.withLock {
            while !String(decoding: output, as: UTF8.self).contains(text) {
                guard !outputEnded, condition.wait(until: deadline) else {
                    throw ProtocolError(
                        "no \"\(text)\" in the output: \(String(decoding: output, as: UTF8.self)) \(stderrSoFar)")
                }
            }
            return String(decoding: output, as: UTF8.self)
        }
    }

    private var stderrSoFar: String { String(decoding: errors.value ?? Data(), as: UTF8.self) }

    /// Waits for sysmirror to end; its status, whole output and error output. After `timeout` it is sent
    /// SIGTERM, which it passes on to the program and its descendants, then SIGKILL.
    func finish(timeout: TimeInterval = 60) -> Outcome {
        shutdown(input, Int32(SHUT_WR))
        stop(after: timeout)
        // A descendant that outlived a killed sysmirror may hold the output open: read what came.
        _ = errorsRead.wait(timeout: .now() + 5)
        let text = condition.withLock {
            let deadline = Date().addingTimeInterval(5)
            while !outputEnded && condition.wait(until: deadline) {}
            return String(decoding: output, as: UTF8.self)
        }
        try? FileManager.default.removeItem(atPath: log)
        let status =
            process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
        return Outcome(status: status, stdout: text, stderr: stderrSoFar)
    }
}

/// The Debug Adapter Protocol (what VS Code and JetBrains' DAP support speak to delve and debugpy):
/// JSON messages, each after a Content-Length header.
final class DAPClient {
    typealias Message = [String: Any]
    let reader: StreamReader
    private var sequence = 0
    /// Messages read but not yet asked for, in order.
    private var waiting: [Message] = []
    /// Every message read, for what the adapter said along the way (output events).
    private(set) var received: [Message] = []

    init(_ stream: ByteStream) { reader = StreamReader(stream) }

    @discardableResult
    func send(_ command: String, _ arguments: Message = [:]) throws -> Int {
        sequence += 1
        let message: Message = ["seq": sequence, "type": "request", "command": command, "arguments": arguments]
        let body = try JSONSerialization.data(withJSONObject: message)
        try reader.stream.send(Array("Content-Length: \(body.count)\r\n\r\n".utf8) + Array(body))
        return sequence
    }

    /// Sends a request and waits for its response, which must be a success; returns its body.
    @discardableResult
    func request(_ command: String, _ arguments: Message = [:], timeout: TimeInterval = 30) throws -> Message {
        let response = try self.response(to: try send(command, arguments), timeout: timeout)
        guard response["success"] as? Bool == true else {
            throw ProtocolError("\(command) failed: \(response["message"] ?? "") \(response["body"] ?? "")")
        }
        return response["body"] as? Message ?? [:]
    }

    func response(to request: Int, timeout: TimeInterval = 30) throws -> Message {
        try next(timeout: timeout) { $0["type"] as? String == "response" && $0["request_seq"] as? Int == request }
    }

    /// The next event named `name`; its body.
    func event(_ name: String, timeout: TimeInterval = 30) throws -> Message {
        try next(timeout: timeout) { $0["type"] as? String == "event" && $0["event"] as? String == name }["body"]
            as? Message ?? [:]
    }

    /// What the program wrote, as the adapter passed it on in output events.
    var programOutput: String {
        received.compactMap { message -> String? in
            guard message["event"] as? String == "output", let body = message["body"] as? Message,
                body["category"] as? String == "stdout"
            else { return nil }
            return body["output"] as? String
        }.joined()
    }

    private func next(timeout: TimeInterval, where matches: (Message) -> Bool) throws -> Message {
        if let index = waiting.firstIndex(where: matches) { return waiting.remove(at: index) }
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let message = try read(before: deadline)
            if matches(message) { return message }
            waiting.append(message)
        }
    }

    private func read(before deadline: Date) throws -> Message {
        var length: Int?
        while let line = try reader.line(before: deadline) {
            if line.isEmpty, length != nil { break }
            if line.lowercased().hasPrefix("content-length:") {
                length = Int(line.dropFirst(15).trimmingCharacters(in: .whitespaces))
            }
        }
        guard let length else { throw ProtocolError("the adapter closed the connection; it had said: \(received)") }
        let body = try reader.bytes(length, before: deadline)
        guard let message = try JSONSerialization.jsonObject(with: Data(body)) as? Message else {
            throw ProtocolError("not a DAP message: \(String(decoding: body, as: UTF8.self))")
        }
        received.append(message)
        return message
    }

    /// The value the debugger shows for the variable `name` among the locals of the top frame of `thread`.
    func local(_ name: String, thread: Int) throws -> (value: String, line: Int) {
        let frames = try request("stackTrace", ["threadId": thread, "levels": 1])["stackFrames"] as? [Message] ?? []
        let frame = try #require(frames.first, "no frames: \(received)")
        let scopes = try request("scopes", ["frameId": frame["id"] as? Int ?? 0])["scopes"] as? [Message] ?? []
        for scope in scopes {
            let variables =
                try request("variables", ["variablesReference": scope["variablesReference"] as? Int ?? 0])[
                    "variables"] as? [Message] ?? []
            if let variable = variables.first(where: { $0["name"] as? String == name }) {
                return (variable["value"] as? String ?? "", frame["line"] as? Int ?? 0)
            }
        }
        throw ProtocolError("no variable \(name) in \(scopes.map { $0["name"] ?? "" })")
    }
}

/// gdb's machine interface (what CLion and VS Code's C/C++ extension drive): numbered commands answered by
/// `N^done`/`N^running`/`N^error`, and asynchronous records (`*stopped`) between the lines of output.
final class MIClient {
    let reader: StreamReader
    private var token = 0
    /// Every line gdb and the program wrote.
    private(set) var lines: [String] = []
    /// How far `record(_:)` has looked.
    private var asyncCursor = 0

    init(_ stream: ByteStream) { reader = StreamReader(stream) }

    /// Runs `command`; returns its result record (`N^done,...`), which must not be an error.
    @discardableResult
    func command(_ command: String, timeout: TimeInterval = 30) throws -> String {
        token += 1
        let prefix = "\(token)^"
        try reader.stream.send(Array("\(token)\(command)\n".utf8))
        let start = lines.count
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let line = lines[start...].first(where: { $0.hasPrefix(prefix) }) {
                guard !line.hasPrefix(prefix + "error") else { throw ProtocolError("\(command): \(line)") }
                return line
            }
            try readLine(before: deadline)
        }
    }

    /// The next asynchronous record starting with `prefix` (for example `*stopped`).
    func record(_ prefix: String, timeout: TimeInterval = 30) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let index = lines[asyncCursor...].firstIndex(where: { $0.hasPrefix(prefix) }) {
                asyncCursor = index + 1
                return lines[index]
            }
            try readLine(before: deadline)
        }
    }

    private func readLine(before deadline: Date) throws {
        guard let line = try reader.line(before: deadline) else {
            throw ProtocolError("gdb ended; it had said:\n\(lines.joined(separator: "\n"))")
        }
        lines.append(line)
    }

    /// The C string `name="..."` in a record, unescaped.
    static func field(_ name: String, in record: String) -> String? {
        guard let start = record.range(of: name + "=\"") else { return nil }
        var value = ""
        var escaped = false
        for character in record[start.upperBound...] {
            if escaped {
                value.append(character == "n" ? "\n" : character == "t" ? "\t" : character)
                escaped = false
            } else if character == "\\" {
                escaped = true
            } else if character == "\"" {
                return value
            } else {
                value.append(character)
            }
        }
        return nil
    }
}

/// Node's inspector (what VS Code's JavaScript debugger and WebStorm speak): Chrome DevTools Protocol
/// messages over a WebSocket, found at http://HOST:PORT/json/list.
final class InspectorClient {
    typealias Message = [String: Any]
    let reader: StreamReader
    private var id = 0
    private var waiting: [Message] = []

    init(port: UInt16, namespace: String) throws {
        let deadline = Date().addingTimeInterval(30)
        var targets: [Message] = []
        while targets.isEmpty {
            // The HTTP side answers once node listens; until then connect retries.
            targets =
                try LoopbackConnection.getJSON(port: port, path: "/json/list", namespace: namespace) as? [Message] ?? []
            guard Date() < deadline else { throw ProtocolError("no inspector target on port \(port)") }
        }
        let url = try #require(URL(string: targets[0]["webSocketDebuggerUrl"] as? String ?? ""))
        let connection = try LoopbackConnection(port: port, namespace: namespace)
        reader = StreamReader(connection)
        let key = Data((0..<16).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
        try connection.send(
            Array(
                """
                GET \(url.path) HTTP/1.1\r
                Host: 127.0.0.1:\(port)\r
                Upgrade: websocket\r
                Connection: Upgrade\r
                Sec-WebSocket-Key: \(key)\r
                Sec-WebSocket-Version: 13\r
                \r

                """.utf8))
        let status = try reader.line(before: deadline) ?? ""
        guard status.contains(" 101 ") else { throw ProtocolError("the inspector refused the WebSocket: \(status)") }
        while let line = try reader.line(before: deadline), !line.isEmpty {}
    }

    /// Ends the session: a program run with --inspect-brk waits at its exit until its debugger has gone.
    func close() { (reader.stream as? LoopbackConnection)?.shutdown() }

    /// Calls `method`; its result.
    @discardableResult
    func call(_ method: String, _ params: Message = [:], timeout: TimeInterval = 30) throws -> Message {
        id += 1
        let mine = id
        try sendText(try JSONSerialization.data(withJSONObject: ["id": mine, "method": method, "params": params]))
        let answer = try next(timeout: timeout) { $0["id"] as? Int == mine }
        if let error = answer["error"] { throw ProtocolError("\(method): \(error)") }
        return answer["result"] as? Message ?? [:]
    }

    /// The next event `method`; its params.
    func event(_ method: String, timeout: TimeInterval = 30) throws -> Message {
        try next(timeout: timeout) { $0["method"] as? String == method }["params"] as? Message ?? [:]
    }

    private func next(timeout: TimeInterval, where matches: (Message) -> Bool) throws -> Message {
        if let index = waiting.firstIndex(where: matches) { return waiting.remove(at: index) }
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let text = try receiveText(before: deadline)
            guard let message = try JSONSerialization.jsonObject(with: Data(text)) as? Message else {
                throw ProtocolError("not a message: \(String(decoding: text, as: UTF8.self))")
            }
            if matches(message) { return message }
            waiting.append(message)
        }
    }

    /// A text frame, masked as a client's must be (RFC 6455, 5.3).
    private func sendText(_ payload: Data) throws {
        var frame: [UInt8] = [0x81]
        switch payload.count {
        case ..<126: frame.append(0x80 | UInt8(payload.count))
        case ..<65536: frame += [0x80 | 126, UInt8(payload.count >> 8), UInt8(payload.count & 0xff)]
        default: frame += [0x80 | 127] + (0..<8).reversed().map { UInt8((payload.count >> ($0 * 8)) & 0xff) }
        }
        let mask = (0..<4).map { _ in UInt8.random(in: 0...255) }
        frame += mask
        frame += payload.enumerated().map { $0.element ^ mask[$0.offset % 4] }
        try reader.stream.send(frame)
    }

    /// The next whole text message (the server's frames are not masked; control frames are skipped).
    private func receiveText(before deadline: Date) throws -> [UInt8] {
        var message: [UInt8] = []
        while true {
            let head = try reader.bytes(2, before: deadline)
            var length = Int(head[1] & 0x7f)
            if length == 126 {
                length = try reader.bytes(2, before: deadline).reduce(0) { $0 << 8 | Int($1) }
            } else if length == 127 {
                length = try reader.bytes(8, before: deadline).reduce(0) { $0 << 8 | Int($1) }
            }
            let payload = try reader.bytes(length, before: deadline)
            let opcode = head[0] & 0x0f
            if opcode == 8 { throw ProtocolError("the inspector closed the WebSocket") }
            guard opcode <= 2 else { continue }
            message += payload
            if head[0] & 0x80 != 0 { return message }
        }
    }
}
