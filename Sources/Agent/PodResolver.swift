import CSysmirror  // Glibc alone does not show MSG_DONTWAIT in release builds
import LinuxSystem
import NameResolution
import SyscallDecoding

#if canImport(Glibc)
    import Glibc
#endif

/// Asks a name server of the pod every question of one lookup at once, from the pod's network namespace:
/// all of them over one UDP socket, each again after a second without an answer, and over TCP the ones whose
/// answer did not fit (TC). Blocking: it runs on the agent's thread pool.
enum PodResolver {
    /// How long a lookup waits for the server in all: resolv.conf's default timeout is 5 s, and a resolver
    /// that asked sysmirror is itself waiting.
    static let patience: UInt64 = 4_000_000_000
    static let resendAfter: UInt64 = 1_000_000_000

    /// The server's answers, one per question that got one; a question without an answer is left out (the
    /// client answers its program SERVFAIL).
    static func answers(server bytes: [UInt8], questions: [DNSQuestion]) -> [[UInt8]] {
        guard let server = SocketAddress(bytes), !questions.isEmpty else { return [] }
        let base = UInt16.random(in: 0...UInt16.max)
        let queries = questions.indices.map { DNSMessage.makeQuery(id: base &+ UInt16($0), questions[$0]) }
        var answers = [[UInt8]?](repeating: nil, count: queries.count)
        askOverUDP(server, queries, base: base, into: &answers)
        for index in answers.indices {
            guard let answer = answers[index], DNSMessage.header(answer)?.truncated == true else { continue }
            answers[index] = askOverTCP(server, queries[index]) ?? answer
        }
        return answers.compactMap { $0 }
    }

    private static func askOverUDP(
        _ server: SocketAddress, _ queries: [[UInt8]], base: UInt16, into answers: inout [[UInt8]?]
    ) {
        guard let socket = try? Sockets.make(family: server.family, type: Int32(SOCK_DGRAM.rawValue)) else { return }
        guard (try? Sockets.connect(socket.raw, to: server)) != nil else { return }
        let deadline = Clock.monotonic() + patience
        var nextSend = Clock.monotonic()
        while answers.contains(where: { $0 == nil }) {
            let now = Clock.monotonic()
            guard now < deadline else { return }
            if now >= nextSend {
                for (index, query) in queries.enumerated() where answers[index] == nil {
                    _ = try? Sockets.send(socket.raw, query[...])
                }
                nextSend = now + resendAfter
            }
            let wait = Int32((min(nextSend, deadline) - now) / 1_000_000) + 1
            guard readiness(of: socket.raw, for: Int16(POLLIN), milliseconds: wait) != 0 else { continue }
            while let answer = try? Sockets.receive(socket.raw, upTo: 65535, flags: Int32(MSG_DONTWAIT)) {
                guard let header = DNSMessage.header(answer) else { continue }
                let index = Int(header.id &- base)
                if index < answers.count, answers[index] == nil { answers[index] = answer }
            }
        }
    }

    /// One query over TCP (RFC 1035 §4.2.2: each message after its UInt16 length).
    private static func askOverTCP(_ server: SocketAddress, _ query: [UInt8]) -> [UInt8]? {
        guard let socket = try? Sockets.make(family: server.family, type: Int32(SOCK_STREAM.rawValue)) else {
            return nil
        }
        try? Sockets.setReceiveTimeout(socket.raw, seconds: 2)
        guard (try? Sockets.connect(socket.raw, to: server)) != nil else { return nil }
        let message = [UInt8(query.count >> 8), UInt8(query.count & 0xFF)] + query
        guard (try? Sockets.send(socket.raw, message[...])) == message.count else { return nil }
        var received: [UInt8] = []
        while received.count < 2 || received.count < 2 + (Int(received[0]) << 8 | Int(received[1])) {
            guard let piece = try? Sockets.receive(socket.raw, upTo: 65537), !piece.isEmpty else { return nil }
            received += piece
        }
        return Array(received[2..<2 + (Int(received[0]) << 8 | Int(received[1]))])
    }
}
