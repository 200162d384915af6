import Foundation
import Testing

/// Real programs under `sysmirror trace`, run as an unprivileged user: their output and exit status must
/// be what they are without sysmirror, and the log must show the calls they made.
@Suite("Programs under trace")
struct ProgramsTests {
    let fixtures = Fixtures.shared

    @Test("A static C program reads a file and keeps its exit status")
    func staticC() throws {
        let (outcome, log) = try Run.trace([fixtures.path("static-reader"), "data.txt", "7"])
        #expect(outcome.status == 7)
        #expect(outcome.stdout == "pod file\n")
        #expect(log.contains { $0.contains(#"openat(AT_FDCWD, "data.txt", O_RDONLY) → local "#) && $0.hasSuffix("µs") })
        #expect(log.first?.contains(#"execve(""#) == true)
    }

    @Test("A static Go program (CGO_ENABLED=0) reads a file")
    func staticGo() throws {
        let (outcome, log) = try Run.trace([fixtures.path("gofixture"), "read", "data.txt", "5"])
        #expect(outcome.status == 5)
        #expect(outcome.stdout == "pod file\n")
        #expect(log.contains { $0.contains(#"openat(AT_FDCWD, "data.txt", O_RDONLY|O_CLOEXEC) → local"#) })
    }

    @Test("200 goroutines open a file at once; every open is served and logged")
    func goroutines() throws {
        let (outcome, log) = try Run.trace([fixtures.path("gofixture"), "many", "200", "data.txt"])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stdout == "ok 200\n")
        #expect(log.filter { $0.contains(#"openat(AT_FDCWD, "data.txt""#) }.count == 200)
    }

    @Test("Go's os/exec (CLONE_VFORK) starts a traced child")
    func goExec() throws {
        let (outcome, log) = try Run.trace([fixtures.path("gofixture"), "exec", "/bin/busybox", "echo", "hi"])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stdout == "hi\n")
        let execs = log.filter { $0.contains("execve(") }
        #expect(execs.count == 2)
        #expect(execs.last?.contains(#"execve("/bin/busybox", ["/bin/busybox", "echo", "hi"]"#) == true)
        #expect(Set(execs.map(pid)).count == 2)
    }

    @Test("fork, vfork and threads: every process and thread is covered")
    func forkVforkThreads() throws {
        let (outcome, log) = try Run.trace([fixtures.path("forker"), "/bin/busybox"])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stdout.contains("forked child\n"))
        #expect(outcome.stdout.contains("vforked child\n"))
        #expect(outcome.stdout.contains("thread open ok\n"))
        #expect(log.contains { $0.contains(#"["busybox", "echo", "forked child"]"#) })
        #expect(log.contains { $0.contains(#"["busybox", "echo", "vforked child"]"#) })
        #expect(log.contains { $0.contains(#""/etc/hostname""#) })
        #expect(Set(log.map(pid)).count >= 4, "main thread, opener thread, two children")
    }

    @Test("Signals that arrive while calls wait on the supervisor: no lost or doubled answers")
    func signalsDuringCalls() throws {
        let (outcome, log) = try Run.trace([fixtures.path("signals"), "data.txt"], timeout: 120)
        #expect(outcome.status == 0, "\(outcome.stdout) \(outcome.stderr)")
        #expect(outcome.stdout.contains("failed=0"))
        // Every open that succeeded was served and is logged exactly once (opens cut short by EINTR before
        // the supervisor received them never reached it).
        let opened = outcome.stdout.split(separator: " ").first { $0.hasPrefix("opened=") }?.dropFirst(7)
        let served = log.filter { $0.contains(#"openat(AT_FDCWD, "data.txt""#) && !$0.contains("<interrupted>") }
        #expect(served.count == Int(opened ?? ""))
    }

    @Test("busybox-static: a shell pipeline with several applets")
    func busybox() throws {
        let script = "cat data.txt | wc -l; ls data.txt"
        let plain = try Run.process(["/bin/busybox", "sh", "-c", script], unprivileged: true)
        let (outcome, log) = try Run.trace(["/bin/busybox", "sh", "-c", script])
        #expect(outcome.status == 0)
        #expect(outcome.stdout == plain.stdout)
        #expect(log.contains { $0.contains(#"open(""#) || $0.contains(#"openat("#) })
    }

    @Test("Dynamic programs: curl and python3")
    func dynamicPrograms() throws {
        let url = "file://\(fixtures.path("data.txt"))"
        let (curl, curlLog) = try Run.trace(["curl", "-s", url])
        #expect(curl.status == 0)
        #expect(curl.stdout == "pod file\n")
        #expect(curlLog.contains { $0.contains("libcurl") })

        let (python, pythonLog) = try Run.trace(["/usr/bin/python3", "-c", "print(open('data.txt').read(), end='')"])
        #expect(python.status == 0, "\(python.stderr)")
        #expect(python.stdout == "pod file\n")
        #expect(pythonLog.contains { $0.contains(#"openat(AT_FDCWD, "data.txt", O_RDONLY|O_CLOEXEC)"#) })
    }

    @Test("Network calls are logged with their addresses; send() and sendto() without one are not routed")
    func networkCalls() throws {
        let (outcome, log) = try Run.trace([fixtures.path("network")])
        #expect(outcome.status == 0, "\(outcome.stdout) \(outcome.stderr)")
        let ports = outcome.stdout.split(separator: " ")
        let udp = String(ports[1])
        let tcp = String(ports[3])
        #expect(log.contains { $0.contains("bind(") && $0.contains("127.0.0.1:0") })
        #expect(log.contains { $0.contains("connect(") && $0.contains("127.0.0.1:\(udp)") })
        #expect(log.contains { $0.contains("connect(") && $0.contains("127.0.0.1:\(tcp)") })
        #expect(log.contains { $0.contains("listen(") })
        #expect(log.contains { $0.contains("sendmsg(") && $0.contains("{msg_name=127.0.0.1:\(udp)}") })
        let sendtos = log.filter { $0.contains("sendto(") }
        #expect(sendtos.count == 1, "only the sendto with a destination reaches the supervisor")
        #expect(sendtos.first?.contains("127.0.0.1:\(udp)") == true)
    }

    @Test("A path ending at the last byte of a page is read whole; one running off it is shown as a pointer")
    func pageEdges() throws {
        let (outcome, log) = try Run.trace([fixtures.path("pages"), "data.txt"])
        #expect(outcome.status == 0)
        #expect(outcome.stdout == "edge ok\nunterminated EFAULT\n")
        let opens = log.filter { $0.contains("openat(") || $0.contains("open(") }.suffix(2)
        #expect(opens.first?.contains(#""data.txt""#) == true)
        #expect(opens.last?.contains(", 0x") == true)
    }

    @Test("The i386 and x32 entry points cannot get around the filter")
    func otherABIs() throws {
        let (outcome, log) = try Run.trace([fixtures.path("abi"), "data.txt"])
        #expect(outcome.status == 0)
        #expect(outcome.stdout == "i386 ENOSYS\nx32 ENOSYS\n")
        #expect(log.contains { $0.contains("= -1 ENOSYS") && $0.contains("denied") && $0.contains("i386") })
        #expect(log.contains { $0.contains("= -1 ENOSYS") && $0.contains("denied") && $0.contains("x32") })
        #expect(outcome.stderr.contains("i386 system call ABI"))
    }

    @Test("Descendants that outlive the program are still served; sysmirror waits for them")
    func descendantsOutliveProgram() throws {
        let script = "(sleep 1; cat data.txt > /dev/null) & exit 3"
        let (outcome, log) = try Run.trace(["/bin/busybox", "sh", "-c", script])
        #expect(outcome.status == 3)
        #expect(outcome.stderr.contains("remaining descendant"))
        #expect(log.contains { $0.contains(#""data.txt""#) })
    }

    @Test(
        "Interactive programs keep the terminal: a busybox shell and the python3 REPL",
        arguments: [
            ("/bin/busybox sh", "echo interactive-$((6*7))\nexit 4\n"),
            ("/usr/bin/python3 -q", "print('interactive-%d' % (6*7))\nimport sys; sys.exit(4)\n"),
        ])
    func interactive(program: String, input: String) throws {
        // `script` gives the program a real terminal; sysmirror must leave it to the program.
        let command = "\(fixtures.sysmirror) trace --quiet -- \(program)"
        let outcome = try Run.process(["script", "-qec", command, "/dev/null"], stdin: input, unprivileged: true)
        #expect(outcome.status == 4)
        #expect(outcome.stdout.contains("interactive-42"))
    }

    func pid(_ line: String) -> Substring {
        line.dropFirst("[pid ".count).prefix { $0 != "]" }
    }
}
