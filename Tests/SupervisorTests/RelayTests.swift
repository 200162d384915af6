import CSysmirror
import Foundation
import LinuxSystem
import Logging
import Synchronization
import SyscallDecoding
import SystemPackage
import Testing

@testable import RemoteServices
@testable import Supervisor
@testable import UserNotification

/// The relay that glues a stolen connection to the program, on real loopback TCP connections.
@Suite("Relays on the serving loop")
struct RelayTests {
    /// A connected loopback TCP pair: (the end the test uses, the end the relay gets).
    func tcpPair() throws -> (outside: SharedDescriptor, inside: SharedDescriptor) {
        let listener = try Sockets.make(family: AF_INET, type: Int32(SOCK_STREAM.rawValue))
        try Sockets.bind(listener.raw, to: .loopback(family: AF_INET))
        try Sockets.listen(listener.raw, backlog: 1)
        let outside = try Sockets.make(family: AF_INET, type: Int32(SOCK_STREAM.rawValue))
        try Sockets.connect(outside.raw, to: try Sockets.localAddress(listener.raw))
        var peer: SocketAddress?
        let inside = try Sockets.accept(listener.raw, flags: Int32(SOCK_NONBLOCK.rawValue), peer: &peer)
        return (SharedDescriptor(outside), SharedDescriptor(inside))
    }

    /// Two loopback connections relayed to each other on `loop`: the test holds the outside ends, the relay
    /// alone the inside ones (so that its close is the last).
    func relayed(
        on loop: EventLoop, finished: @escaping @Sendable (Int, Int) -> Void
    ) throws -> (client: SharedDescriptor, server: SharedDescriptor) {
        let client = try tcpPair(), server = try tcpPair()
        let (clientSide, serverSide) = (client.inside, server.inside)
        loop.execute { Relay.start(on: loop, clientSide, serverSide, finished: finished) }
        return (client.outside, server.outside)
    }

    func readAll(_ fd: Int32, count: Int) throws -> [UInt8] {
        var bytes: [UInt8] = []
        while bytes.count < count {
            let piece = try Sockets.receive(fd, upTo: count - bytes.count)
            if piece.isEmpty { break }
            bytes += piece
        }
        return bytes
    }

    func eventually(_ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(5)
        while !condition() && Date() < deadline { usleep(1000) }
        return condition()
    }

    @Test("Bytes go both ways; one side's end of input reaches the other while the other direction goes on")
    func bothWaysAndHalfClose() throws {
        let loop = try EventLoop(name: "test-relay")
        defer { loop.close() }
        let counts = Mutex<(Int, Int)?>(nil)
        let (client, server) = try relayed(on: loop) { a, b in counts.withLock { $0 = (a, b) } }
        let request = [UInt8](repeating: 1, count: 300_000)
        var sent = try Sockets.send(client.raw, request[...])
        while sent < request.count { sent += try Sockets.send(client.raw, request[sent...]) }
        try Sockets.shutdownOutput(client.raw)
        #expect(try readAll(server.raw, count: request.count + 1) == request)  // and then its end
        let answer = Array("answer after the request's end".utf8)
        _ = try Sockets.send(server.raw, answer[...])
        try Sockets.shutdownOutput(server.raw)
        #expect(try readAll(client.raw, count: answer.count + 1) == answer)
        #expect(eventually { counts.withLock { $0 } != nil })
        #expect(counts.withLock { $0 }.map { [$0.0, $0.1] } == [request.count, answer.count])
    }

    @Test("A side that resets is passed on as a reset")
    func resetPassedOn() throws {
        let loop = try EventLoop(name: "test-relay")
        defer { loop.close() }
        let ended = Atomic<Bool>(false)
        let (client, server) = try relayed(on: loop) { _, _ in ended.store(true, ordering: .relaxed) }
        _ = try Sockets.send(server.raw, Array("partial".utf8)[...])
        #expect(try readAll(client.raw, count: 7) == Array("partial".utf8))
        try Sockets.disconnect(server.raw)  // resets the connection
        #expect(eventually { ended.load(ordering: .relaxed) })
        // The relay closed its end with a reset: the client's next read fails (ECONNRESET), not an end of stream.
        #expect(throws: SystemCallError("recv", .connectionReset)) {
            _ = try Sockets.receive(client.raw, upTo: 16, flags: Int32(MSG_DONTWAIT))
        }
    }
}

@Suite("Answering a call once")
struct PendingCallTests {
    @Test("A second answer is refused: the log hears one outcome")
    func answeredOnce() throws {
        // A listener on /dev/null: every answer fails in the kernel, which the outcome then says (interrupted).
        let listener = NotificationListener(descriptor: try .open("/dev/null", .readOnly))
        let outcomes = Mutex<[Outcome]>([])
        let call = PendingCall(
            notification: UserNotification.Notification(seccomp_notif()), listener: listener,
            logger: .init(label: "test"),
            done: { outcome, _, _, _ in outcomes.withLock { $0.append(outcome) } })
        call.fail(EIO)
        call.succeed(0)
        call.proceed()
        call.gone()
        #expect(outcomes.withLock { $0.count } == 1)
    }
}
