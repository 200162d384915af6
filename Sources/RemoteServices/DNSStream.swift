import LinuxSystem
import SyscallDecoding

#if canImport(Glibc)
    import Glibc
#endif

/// A program's TCP connection to a name server of the pod, where the agent is reached through a port-forward:
/// sysmirror holds its other end (a loopback pairing) and answers each query (RFC 1035 §4.2.2: a UInt16
/// length, then the message) through `PodNames`, in the order they come, on the serving loop. A message that
/// is not a query ends the connection, as a name server would.
final class DNSStream: @unchecked Sendable {  // touched only on the serving loop, where its answers come back to
    private let loop: EventLoop
    private let fd: SharedDescriptor
    private let names: PodNames
    private let server: SocketAddress
    private var registration: EventLoop.Registration?
    private var input: [UInt8] = []
    private var output: [UInt8] = []
    /// Answers still to come, in the order of their queries: TCP answers may come in any order (RFC 7766),
    /// but some resolvers read them in order.
    private var expected: [UInt64] = []
    private var ready: [UInt64: [UInt8]] = [:]
    private var nextQuery: UInt64 = 0
    private var inputEnded = false

    private init(loop: EventLoop, fd: SharedDescriptor, names: PodNames, server: SocketAddress) {
        self.loop = loop
        self.fd = fd
        self.names = names
        self.server = server
    }

    /// On the loop: serves `fd` until the program closes its end.
    static func start(on loop: EventLoop, _ fd: SharedDescriptor, names: PodNames, server: SocketAddress) {
        let stream = DNSStream(loop: loop, fd: fd, names: names, server: server)
        stream.registration = try? loop.register(fd.raw, for: .readable) { stream.ready($0) }
        if stream.registration == nil { stream.finish() }
    }

    private func ready(_ events: EventLoop.Events) {
        if events.contains(.writable) { flush() }
        guard events.contains(.readable) || events.contains(.hangUp) || events.contains(.error) else { return }
        while !inputEnded {
            do throws(SystemCallError) {
                let piece = try Sockets.receive(fd.raw, upTo: 65536, flags: Int32(MSG_DONTWAIT))
                if piece.isEmpty { inputEnded = true } else { input += piece }
            } catch {
                if error.errno != .resourceTemporarilyUnavailable { inputEnded = true }
                break
            }
        }
        while input.count >= 2, input.count >= 2 + (Int(input[0]) << 8 | Int(input[1])) {
            let length = Int(input[0]) << 8 | Int(input[1])
            let message = Array(input[2..<2 + length])
            input.removeFirst(2 + length)
            let number = nextQuery
            nextQuery += 1
            expected.append(number)
            let answered = names.answer(message, server: server, udp: false) { [loop] answer in
                loop.execute { self.answered(number, answer) }
            }
            if !answered { return finish() }
        }
        if inputEnded && expected.isEmpty { finish() }
    }

    private func answered(_ number: UInt64, _ answer: [UInt8]) {
        guard registration != nil else { return }
        ready[number] = answer
        while let first = expected.first, let answer = ready.removeValue(forKey: first) {
            expected.removeFirst()
            output += [UInt8(answer.count >> 8), UInt8(answer.count & 0xFF)] + answer
        }
        flush()
        if inputEnded && expected.isEmpty && output.isEmpty { finish() }
    }

    private func flush() {
        guard let registration else { return }
        do throws(SystemCallError) {
            if !output.isEmpty { output.removeFirst(try Sockets.send(fd.raw, output[...], flags: Int32(MSG_DONTWAIT))) }
        } catch {
            if error.errno != .resourceTemporarilyUnavailable { return finish() }
        }
        loop.change(registration, to: output.isEmpty ? .readable : [.readable, .writable])
        if inputEnded && expected.isEmpty && output.isEmpty { finish() }
    }

    private func finish() {
        if let registration { loop.deregister(registration) }
        registration = nil
        // The last holder of `fd` is this stream: it closes when the loop lets the stream go.
    }
}
