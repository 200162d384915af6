import SyscallDecoding
import Testing

@Suite("Trace records: the hand-off from the receiving thread to the log writer")
struct TraceRecordTests {
    static let table = SyscallTable.x86_64

    static func events() -> [TraceEvent] {
        let openat = table[.openat]!
        let execve = table[.execve]!
        let connect = table[.connect]!
        return [
            TraceEvent(
                time: 1, pid: 42, syscall: "openat",
                arguments: DecodedSyscall(
                    spec: openat,
                    values: [
                        .integer(UInt64(bitPattern: -100)), .string(Array("/etc/hosts".utf8)), .integer(0), .integer(0),
                    ]),
                route: .local, outcome: .continued, durationNanos: 1500),
            TraceEvent(
                time: .max, pid: -1, syscall: "execve",
                arguments: DecodedSyscall(
                    spec: execve,
                    values: [
                        .fault(.unterminated, address: 0x1000), .strings([[1, 2], []], truncated: true),
                        .fault(.unreadable(errno: 14), address: 0),
                    ]),
                route: .remote, outcome: .returned(3), durationNanos: 0, note: "why"),
            TraceEvent(
                time: 7, pid: 7, syscall: "connect",
                arguments: DecodedSyscall(
                    spec: connect,
                    values: [.integer(3), .bytes([2, 0, 0, 80, 10, 96, 0, 10]), .fault(.tooLong, address: 9)]),
                route: .notFound, outcome: .failed(errno: 2), durationNanos: 9),
            TraceEvent(
                time: 8, pid: 8, syscall: "open", arguments: nil, route: .denied, outcome: .interrupted,
                durationNanos: 1, note: ""),
        ]
    }

    @Test("Events survive the round trip exactly")
    func roundTrip() {
        var buffer: [UInt8] = []
        for event in Self.events() { TraceRecord.append(event, to: &buffer) }
        #expect(TraceRecord.decode(buffer, table: Self.table) == Self.events())
    }

    @Test("A cut or damaged buffer yields the whole records before the damage, and never traps")
    func damaged() {
        var buffer: [UInt8] = []
        for event in Self.events() { TraceRecord.append(event, to: &buffer) }
        var generator = SystemRandomNumberGenerator()
        for cut in 0..<buffer.count {
            let decoded = TraceRecord.decode(Array(buffer[..<cut]), table: Self.table)
            #expect(decoded == Array(Self.events().prefix(decoded.count)))
        }
        for _ in 0..<2000 {
            var mutated = buffer
            for _ in 0..<3 {
                mutated[Int.random(in: 0..<mutated.count, using: &generator)] = .random(in: 0...255, using: &generator)
            }
            _ = TraceRecord.decode(mutated, table: Self.table)
        }
    }
}
