// The serving loop, measured (the issue asked: "your own epoll reactor, or SwiftNIO's: measure and choose").
// One TCP relay, client ⇄ relay ⇄ server on 127.0.0.1, on (a) LinuxSystem.EventLoop with the serving half's
// own Relay and (b) SwiftNIO, two channels glued by a handler each. Both relays run in this process on their loop's one
// thread; the client (this thread) and the server (a thread of its own) use plain blocking sockets, so that
// only the relay differs. The loop thread's CPU time is read from its CPU clock: on 2 cores, CPU is the cost.
import Foundation
import LinuxSystem
import NIOCore
import NIOPosix
import RemoteServices
import SyscallDecoding

/// One channel's half of the SwiftNIO relay: what it reads is written to `partner` (flushed at the end of a
/// read burst, as NIO intends); when the partner is over its high watermark, this channel stops reading
/// (autoRead off) until the partner's writability comes back. A half-close is passed on once the writes
/// before it are out: NIO drops pending writes at a close of output.
final class NIOGlue: ChannelInboundHandler {  // made, joined and used on the loop only
    typealias InboundIn = ByteBuffer
    var partner: (any Channel)!

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        partner.write(unwrapInboundIn(data), promise: nil)
        if !partner.isWritable { try? context.channel.syncOptions?.setOption(ChannelOptions.autoRead, value: false) }
    }

    func channelReadComplete(context: ChannelHandlerContext) { partner.flush() }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { try? partner.syncOptions?.setOption(ChannelOptions.autoRead, value: true) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard case .inputClosed? = event as? ChannelEvent else { return }
        let partner = self.partner!
        partner.writeAndFlush(ByteBuffer()).whenComplete { _ in partner.close(mode: .output, promise: nil) }
    }

    /// Both directions have ended (NIO closes a channel whose input and output are both closed), or it failed.
    func channelInactive(context: ChannelHandlerContext) { partner.close(promise: nil) }

    func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
}

/// Starts the SwiftNIO relay between `first` and `second` (owned by NIO from now on) on `loop`.
func startNIORelay(on loop: any NIOCore.EventLoop, _ first: Int32, _ second: Int32) throws {
    // Not reading before both partners are known.
    let channels = try [first, second].map { fd in
        try ClientBootstrap(group: loop)
            .channelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .channelOption(ChannelOptions.autoRead, value: false)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(NIOGlue()) }
            }
            .withConnectedSocket(fd).wait()
    }
    try loop.submit {
        for (channel, partner) in zip(channels, channels.reversed()) {
            try channel.pipeline.syncOperations.handler(type: NIOGlue.self).partner = partner
            try channel.syncOptions?.setOption(ChannelOptions.autoRead, value: true)
        }
    }.wait()
}

/// The calling thread's CPU clock, which any thread may read.
func currentThreadCPUClock() -> clockid_t {
    var clock = clockid_t()
    pthread_getcpuclockid(pthread_self(), &clock)
    return clock
}

func nanoseconds(on clock: clockid_t) -> UInt64 {
    var time = timespec()
    clock_gettime(clock, &time)
    return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
}

/// The names of this process's threads (/proc/self/task/*/comm).
func threadNames() -> [String] {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
    return tasks.compactMap { try? String(contentsOfFile: "/proc/self/task/\($0)/comm", encoding: .utf8) }
        .map { $0.trimmingCharacters(in: .newlines) }
}

/// A result handed from one thread to another; the hand-over (a join, a semaphore) orders the accesses.
final class Handed<Value>: @unchecked Sendable {
    var value: Value
    init(_ value: Value) { self.value = value }
}

/// The two ends of a new TCP connection over 127.0.0.1 (TCP_NODELAY, as the serving side sets); the caller
/// owns both numbers.
func loopbackConnection() throws -> (Int32, Int32) {
    let listener = try Sockets.make(family: AF_INET, type: Int32(SOCK_STREAM.rawValue))
    try Sockets.bind(listener.raw, to: .loopback(family: AF_INET))
    try Sockets.listen(listener.raw, backlog: 1)
    let near = try Sockets.make(family: AF_INET, type: Int32(SOCK_STREAM.rawValue))
    try Sockets.connect(near.raw, to: Sockets.localAddress(listener.raw))
    var peer: SyscallDecoding.SocketAddress?
    let far = try Sockets.accept(listener.raw, peer: &peer)
    try Sockets.setNoDelay(near.raw)
    try Sockets.setNoDelay(far.raw)
    return (near.release(), far.release())
}

/// client ⇄ relay ⇄ server, or client ⇄ server when `relay` is nil: the client's and the server's ends
/// (blocking; a receive gives up after 30 s, so that a stuck relay fails the run instead of hanging it).
func chain(through relay: ((Int32, Int32) throws -> Void)?) throws -> (client: SharedDescriptor, server: SharedDescriptor) {
    let (client, relayNear) = try loopbackConnection()
    var server = relayNear
    if let relay {
        let (relayFar, farServer) = try loopbackConnection()
        try relay(relayNear, relayFar)
        server = farServer
    }
    let ends = (SharedDescriptor(OwnedDescriptor(taking: client)), SharedDescriptor(OwnedDescriptor(taking: server)))
    try Sockets.setReceiveTimeout(ends.0.raw, seconds: 30)
    try Sockets.setReceiveTimeout(ends.1.raw, seconds: 30)
    return ends
}

func sendAll(_ fd: Int32, _ bytes: ArraySlice<UInt8>) throws {
    var sent = bytes.startIndex
    while sent < bytes.endIndex { sent += try Sockets.send(fd, bytes[sent...]) }
}

/// One relay under test: how it starts on two non-blocking ends it then owns, and its loop thread's CPU clock.
struct LoopUnderTest {
    let name: String
    let relay: ((Int32, Int32) throws -> Void)?
    let cpuClock: clockid_t?
}

/// `trips` round trips of 64 bytes after 1,000 unmeasured: p50 and p99 in µs, loop CPU µs per round trip.
func pingPong(_ tested: LoopUnderTest, trips: Int) throws -> (p50: Double, p99: Double, cpu: Double) {
    let (client, server) = try chain(through: tested.relay)
    // Echoes until the client's EOF, passed on by the relay.
    let echo = try ThreadHandle.start(name: "bench-echo") {
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        while let count = try? Sockets.receive(server.raw, into: &buffer), count > 0 {
            guard (try? sendAll(server.raw, buffer[..<count])) != nil else { return }
        }
    }
    let warmUp = 1_000, message = [UInt8](repeating: 0x2a, count: 64)
    var answer = [UInt8](repeating: 0, count: 64)
    var times: [Double] = []
    times.reserveCapacity(trips)
    var cpuStart: UInt64 = 0
    for trip in 0..<(warmUp + trips) {
        if trip == warmUp, let clock = tested.cpuClock { cpuStart = nanoseconds(on: clock) }
        let start = DispatchTime.now().uptimeNanoseconds
        try sendAll(client.raw, message[...])
        var got = 0
        while got < answer.count {
            let count = try Sockets.receive(client.raw, into: &answer, at: got)
            guard count > 0 else { throw BenchError(description: "\(tested.name): the echo ended early") }
            got += count
        }
        if trip >= warmUp { times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1000) }
    }
    let cpu = tested.cpuClock.map { Double(nanoseconds(on: $0) - cpuStart) / 1000 / Double(trips) } ?? .nan
    try Sockets.shutdownOutput(client.raw)
    echo.join()
    times.sort()
    return (times[times.count / 2], times[times.count * 99 / 100], cpu)
}

/// `bytes` one way in 64 KiB writes, then the client's EOF; done when the server has read it all and the EOF.
/// MB/s (10^6 bytes) and the loop's CPU ms for the whole transfer.
func oneWay(_ tested: LoopUnderTest, bytes: Int) throws -> (rate: Double, cpu: Double) {
    let (client, server) = try chain(through: tested.relay)
    let received = Handed(0)
    let sink = try ThreadHandle.start(name: "bench-sink") {
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        while let count = try? Sockets.receive(server.raw, into: &buffer), count > 0 { received.value += count }
    }
    let piece = [UInt8](repeating: 0x5a, count: 64 << 10)
    let cpuStart = tested.cpuClock.map { nanoseconds(on: $0) } ?? 0
    let start = DispatchTime.now().uptimeNanoseconds
    for _ in 0..<(bytes / piece.count) { try sendAll(client.raw, piece[...]) }
    try Sockets.shutdownOutput(client.raw)
    sink.join()
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    let cpu = tested.cpuClock.map { Double(nanoseconds(on: $0) - cpuStart) / 1e6 } ?? .nan
    guard received.value == bytes else {
        throw BenchError(description: "\(tested.name): \(received.value) of \(bytes) bytes arrived")
    }
    return (Double(bytes) / 1e6 / seconds, cpu)
}

/// The section: both loops (and no relay, for reference), interleaved round after round; medians.
func servingLoops() throws {
    let trips = 20_000, bytes = 256 << 20
    let threadsAtStart = threadNames()

    let epoll = try LinuxSystem.EventLoop(name: "bench-epoll")
    defer { epoll.close() }
    let epollClock = Handed(clockid_t())
    let clockRead = DispatchSemaphore(value: 0)
    epoll.execute {
        epollClock.value = currentThreadCPUClock()
        clockRead.signal()
    }
    clockRead.wait()
    let afterEpoll = threadNames()

    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    defer { try? group.syncShutdownGracefully() }
    let nioLoop = group.next()
    let nioClock = try nioLoop.submit { currentThreadCPUClock() }.wait()
    let afterNIO = threadNames()

    let loops = [
        LoopUnderTest(name: "no relay (client ⇄ server)", relay: nil, cpuClock: nil),
        LoopUnderTest(
            name: "own epoll (LinuxSystem.EventLoop)",
            relay: { first, second in
                for fd in [first, second] { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
                let ends = [first, second].map { SharedDescriptor(OwnedDescriptor(taking: $0)) }
                epoll.execute { Relay.start(on: epoll, ends[0], ends[1]) { _, _ in } }
            }, cpuClock: epollClock.value),
        LoopUnderTest(
            name: "SwiftNIO (MultiThreadedEventLoopGroup, 1)",
            relay: { first, second in try startNIORelay(on: nioLoop, first, second) }, cpuClock: nioClock),
    ]
    var p50: [String: [Double]] = [:], p99: [String: [Double]] = [:], tripCPU: [String: [Double]] = [:]
    var rate: [String: [Double]] = [:], transferCPU: [String: [Double]] = [:]
    let started = Date()
    for _ in 0..<options.rounds {
        for tested in loops {
            let latency = try pingPong(tested, trips: trips)
            p50[tested.name, default: []].append(latency.p50)
            p99[tested.name, default: []].append(latency.p99)
            tripCPU[tested.name, default: []].append(latency.cpu)
            let transfer = try oneWay(tested, bytes: bytes)
            rate[tested.name, default: []].append(transfer.rate)
            transferCPU[tested.name, default: []].append(transfer.cpu)
        }
    }
    // Threads added by each loop, at its start and still there after all the traffic.
    func added(_ now: [String], since before: [String]) -> [String] {
        var left = now
        for name in before { if let index = left.firstIndex(of: name) { left.remove(at: index) } }
        return left
    }
    let atEnd = added(threadNames(), since: threadsAtStart)
    let threads = [
        loops[1].name: added(afterEpoll, since: threadsAtStart),
        loops[2].name: added(afterNIO, since: afterEpoll),
    ]

    print("Serving loop: one TCP relay, client ⇄ relay ⇄ server on 127.0.0.1, relay on its loop's thread in this")
    print("process, client and server blocking sockets on other threads (median of \(options.rounds) rounds)")
    print(
        pad("relay", 44) + pad("threads", 9) + pad("p50 µs", 9) + pad("p99 µs", 9) + pad("CPU µs/rt", 11)
            + pad("MB/s", 8) + "CPU ms/256 MiB")
    func shown(_ value: Double, _ digits: Int) -> String { value.isNaN ? "-" : format(value, digits) }
    for tested in loops {
        let name = tested.name
        print(
            pad(name, 44) + pad(threads[name].map { String($0.count) } ?? "-", 9) + pad(format(median(p50[name]!)), 9)
                + pad(format(median(p99[name]!)), 9) + pad(shown(median(tripCPU[name]!), 2), 11)
                + pad(format(median(rate[name]!), 0), 8) + shown(median(transferCPU[name]!), 0))
    }
    print("ping-pong: \(trips) round trips of 64 bytes (after 1,000 unmeasured); one way: 256 MiB in 64 KiB writes,")
    print("then EOF, timed until the server has read the EOF. CPU: the loop thread's CPU clock, per round trip and")
    print("for the 256 MiB. threads: added by starting the loop (\((threads[loops[1].name]! + threads[loops[2].name]!).joined(separator: ", ")));")
    print("added since the section started, after all runs: \(atEnd.joined(separator: ", "))")
    print("section: \(format(Date().timeIntervalSince(started))) s")
    print("")
}
