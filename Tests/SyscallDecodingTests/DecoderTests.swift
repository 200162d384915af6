import SyscallDecoding
import Testing

@Suite("Reading arguments from a program's memory")
struct DecoderTests {
    let table = SyscallTable.x86_64
    let decoder = SyscallDecoder()

    func arguments(_ values: UInt64...) -> RawArguments { RawArguments(values) }

    @Test("openat: dirfd, the path read from memory, flags")
    func openat() throws {
        var memory = MemoryImage()
        memory.write("/etc/hosts", at: 0x1000)
        let call = decoder.decode(
            try #require(table[.openat]), arguments: arguments(UInt64(bitPattern: -100), 0x1000, 0o2000000, 0),
            memory: memory)
        #expect(call.path == Array("/etc/hosts".utf8))
        #expect(
            TraceFormat.text.line(event(call))
                == "[pid 7] openat(AT_FDCWD, \"/etc/hosts\", O_RDONLY|O_CLOEXEC) → local 1.5µs\n")
    }

    @Test("A path whose NUL is the last byte before an unmapped page is read whole")
    func pathAtPageEnd() throws {
        var memory = MemoryImage()
        let path = "/var/run/secrets/kubernetes.io/serviceaccount/token"
        let address = 2 * MemoryImage.pageSize - UInt64(path.utf8.count + 1)
        memory.write(path, at: address)
        let call = decoder.decode(try #require(table[.open]), arguments: arguments(address, 0, 0), memory: memory)
        #expect(call.path == Array(path.utf8))
    }

    @Test("A path longer than the first piece and crossing a page boundary is read whole")
    func longPathAcrossPages() throws {
        var memory = MemoryImage()
        let path = "/" + String(repeating: "d/", count: 400) + "file"
        memory.write(path, at: MemoryImage.pageSize - 100)
        let call = decoder.decode(
            try #require(table[.open]), arguments: arguments(MemoryImage.pageSize - 100, 0, 0), memory: memory)
        #expect(call.path == Array(path.utf8))
    }

    @Test("A string that runs into an unmapped page, one with no NUL within PATH_MAX, and a bad pointer")
    func faults() throws {
        var memory = MemoryImage()
        memory.write([UInt8](repeating: UInt8(ascii: "x"), count: 16), at: MemoryImage.pageSize - 16)
        memory.write([UInt8](repeating: UInt8(ascii: "y"), count: 5000), at: 0x10000)
        let open = try #require(table[.open])
        let unterminated = decoder.decode(open, arguments: arguments(MemoryImage.pageSize - 16, 0, 0), memory: memory)
        #expect(unterminated.values[0] == .fault(.unterminated, address: MemoryImage.pageSize - 16))
        let tooLong = decoder.decode(open, arguments: arguments(0x10000, 0, 0), memory: memory)
        #expect(tooLong.values[0] == .fault(.tooLong, address: 0x10000))
        let unmapped = decoder.decode(open, arguments: arguments(0xdead_0000, 0, 0), memory: memory)
        #expect(unmapped.values[0] == .fault(.unreadable(errno: 14), address: 0xdead_0000))
        #expect(unmapped.path == nil)
        #expect(TraceFormat.text.line(event(unmapped)).contains("open(0xdead0000, O_RDONLY)"))
    }

    @Test("connect: the socket address, read for the length the program gave")
    func connect() throws {
        var memory = MemoryImage()
        memory.write([2, 0, 0, 80, 10, 96, 0, 10] + [UInt8](repeating: 0, count: 8), at: 0x2000)
        let call = decoder.decode(try #require(table[.connect]), arguments: arguments(3, 0x2000, 16), memory: memory)
        #expect(call.socketAddress == .inet(address: [10, 96, 0, 10], port: 80))
        #expect(TraceFormat.text.line(event(call)).contains("connect(3, 10.96.0.10:80, 16)"))
    }

    @Test("sendto with no address shows NULL; sendmsg shows msg_name")
    func sendCalls() throws {
        var memory = MemoryImage()
        let sendto = decoder.decode(
            try #require(table[.sendto]), arguments: arguments(4, 0x3000, 1, 0x4000, 0, 0), memory: memory)
        #expect(sendto.socketAddress == nil)
        #expect(TraceFormat.text.line(event(sendto)).contains("sendto(4, 0x3000, 1, MSG_NOSIGNAL, NULL, 0)"))

        var name = [UInt8](repeating: 0, count: 28)
        name[0] = 10  // AF_INET6
        name[2] = 0x1f
        name[3] = 0x90
        name[8] = 0xfd
        name[23] = 1
        memory.write(name, at: 0x5000)
        memory.write(
            .littleEndian(UInt64(0x5000)) + .littleEndian(UInt32(28)) + [UInt8](repeating: 0, count: 44), at: 0x6000)
        let sendmsg = decoder.decode(try #require(table[.sendmsg]), arguments: arguments(5, 0x6000, 0), memory: memory)
        #expect(sendmsg.socketAddress?.description == "[fd00::1]:8080")
        #expect(TraceFormat.text.line(event(sendmsg)).contains("sendmsg(5, {msg_name=[fd00::1]:8080}, 0)"))
    }

    @Test("execve: argv as strings, cut after the limit")
    func execve() throws {
        var memory = MemoryImage()
        memory.write("/bin/ls", at: 0x7000)
        memory.write("-l", at: 0x7100)
        memory.write(
            .littleEndian(UInt64(0x7000)) + .littleEndian(UInt64(0x7100)) + .littleEndian(UInt64(0)), at: 0x8000)
        let spec = try #require(table[.execve])
        let call = decoder.decode(spec, arguments: arguments(0x7000, 0x8000, 0x9000), memory: memory)
        #expect(call.values[1] == .strings([Array("/bin/ls".utf8), Array("-l".utf8)], truncated: false))
        #expect(TraceFormat.text.line(event(call)).contains(#"execve("/bin/ls", ["/bin/ls", "-l"], 0x9000)"#))

        var many = MemoryImage()
        many.write("a", at: 0x100)
        many.write((0...40).flatMap { _ in [UInt8].littleEndian(UInt64(0x100)) }, at: 0x8000)
        let long = decoder.decode(spec, arguments: arguments(0x100, 0x8000, 0), memory: many)
        guard case .strings(let strings, true) = long.values[1] else {
            Issue.record("argv beyond the limit is cut and marked")
            return
        }
        #expect(strings.count == SyscallDecoder.argumentLimit)
    }

    @Test("openat2: struct open_how")
    func openat2() throws {
        var memory = MemoryImage()
        memory.write("etc/passwd", at: 0x1000)
        memory.write(
            .littleEndian(UInt64(0o100)) + .littleEndian(UInt64(0o600)) + .littleEndian(UInt64(0x10)), at: 0x2000)
        let call = decoder.decode(
            try #require(table[.openat2]), arguments: arguments(9, 0x1000, 0x2000, 24), memory: memory)
        #expect(
            TraceFormat.text.line(event(call)).contains(
                #"openat2(9, "etc/passwd", {flags=O_RDONLY|O_CREAT, mode=0600, resolve=RESOLVE_IN_ROOT}, 24)"#))
    }

    @Test("Every routed call has a table entry whose argument count fits the registers")
    func tableLookups() {
        for spec in SyscallTable.x86_64.specs {
            #expect(spec.arguments.count <= 6)
            #expect(SyscallTable.x86_64[spec.number] == spec)
            #expect(SyscallTable.x86_64[spec.call] == spec)
        }
        #expect(SyscallTable.x86_64[-1] == nil)
        #expect(SyscallTable.x86_64[100_000] == nil)
    }

    func event(_ call: DecodedSyscall) -> TraceEvent {
        TraceEvent(
            time: 0, pid: 7, syscall: call.spec.name, arguments: call, route: .local, outcome: .continued,
            durationNanos: 1_500)
    }
}

@Suite("Decoding arbitrary programs")
struct DecoderRobustnessTests {
    @Test("Random registers over random memory: every call decodes and formats without trapping")
    func randomInput() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<300 {
            var memory = MemoryImage()
            for _ in 0..<4 {
                let page = UInt64.random(in: 0..<16, using: &generator) * MemoryImage.pageSize
                let bytes = (0..<Int.random(in: 1...5000, using: &generator)).map { _ in
                    UInt8.random(in: 0...255, using: &generator)
                }
                memory.write(bytes, at: page + UInt64.random(in: 0..<MemoryImage.pageSize, using: &generator))
            }
            for spec in SyscallTable.x86_64.specs {
                let registers = (0..<6).map { _ in
                    Bool.random(using: &generator)
                        ? UInt64.random(in: 0..<(17 * MemoryImage.pageSize), using: &generator)
                        : UInt64.random(in: 0...UInt64.max, using: &generator)
                }
                let call = SyscallDecoder().decode(spec, arguments: RawArguments(registers), memory: memory)
                #expect(call.values.count == spec.arguments.count)
                let event = TraceEvent(
                    time: 0, pid: 1, syscall: spec.name, arguments: call, route: .local, outcome: .continued,
                    durationNanos: 0)
                #expect(TraceFormat.text.line(event).hasSuffix("\n"))
                #expect(TraceFormat.json.line(event).hasSuffix("}\n"))
                var record: [UInt8] = []
                TraceRecord.append(event, to: &record)
                #expect(TraceRecord.decode(record, table: .x86_64) == [event])
            }
        }
    }
}
