import Foundation
import Testing

/// Exit statuses, signals, and the errors a user meets: each with the message a shell would give.
@Suite("Exit status, signals and errors")
struct ErrorsAndSignalsTests {
    let fixtures = Fixtures.shared

    func trace(_ arguments: [String], options: [String] = ["--quiet"]) throws -> Outcome {
        try Run.process([fixtures.sysmirror, "trace"] + options + ["--"] + arguments, unprivileged: true)
    }

    @Test("A program killed by signal N exits 128+N", arguments: [("TERM", 143), ("KILL", 137), ("SEGV", 139)])
    func killedBySignal(signal: String, status: Int32) throws {
        let outcome = try trace(["/bin/busybox", "sh", "-c", "kill -\(signal) $$"])
        #expect(outcome.status == status)
    }

    @Test(
        "SIGTERM, SIGINT, SIGHUP and SIGQUIT sent to sysmirror reach the program",
        arguments: [("TERM", 15), ("INT", 2), ("HUP", 1), ("QUIT", 3)])
    func forwardedSignals(name: String, number: Int32) throws {
        // The program reports the signal it got and exits with its number; sysmirror must pass it on.
        // The tracer runs in the background of an interactive-free shell, which would start it with SIGINT
        // and SIGQUIT ignored (POSIX); `unblocked` gives it a clean start.
        let script = "trap 'echo got-\(name); exit \(number)' \(name); echo ready; while :; do sleep 0.05; done"
        let command = """
            \(fixtures.path("unblocked")) \(fixtures.sysmirror) trace --quiet -- /bin/busybox sh -c "\(script)" > out.$$ &
            tracer=$!
            for i in $(seq 200); do grep -q ready out.$$ 2>/dev/null && break; sleep 0.05; done
            kill -\(name) $tracer
            wait $tracer; status=$?
            cat out.$$; rm -f out.$$
            exit $status
            """
        let outcome = try Run.process(["/bin/busybox", "sh", "-c", command], unprivileged: true, timeout: 30)
        #expect(outcome.stdout.contains("got-\(name)"))
        #expect(outcome.status == number)
    }

    @Test("When sysmirror is killed, the program's routed calls fail with ENOSYS instead of hanging")
    func supervisorKilled() throws {
        let command = """
            \(fixtures.sysmirror) trace --quiet -- \(fixtures.path("survivor")) data.txt > survivor.$$ &
            tracer=$!
            for i in $(seq 200); do grep -q started survivor.$$ 2>/dev/null && break; sleep 0.05; done
            kill -KILL $tracer
            for i in $(seq 200); do grep -q failed survivor.$$ && break; sleep 0.05; done
            cat survivor.$$; rm -f survivor.$$
            """
        let outcome = try Run.process(["/bin/busybox", "sh", "-c", command], unprivileged: true, timeout: 30)
        #expect(outcome.stdout == "started\nopen failed: ENOSYS\n")
    }

    @Test("A program that is not on PATH: 127, as a shell says it")
    func commandNotFound() throws {
        let outcome = try trace(["no-such-program-here"])
        #expect(outcome.status == 127)
        #expect(outcome.stderr.contains("no-such-program-here: command not found"))
    }

    @Test("A path that does not exist: 127, No such file or directory")
    func missingPath() throws {
        let outcome = try trace(["./missing-program"])
        #expect(outcome.status == 127)
        #expect(outcome.stderr.contains("./missing-program: No such file or directory"))
    }

    @Test("A file that is not executable, and a directory: 126")
    func notExecutable() throws {
        let denied = try trace(["./data.txt"])
        #expect(denied.status == 126)
        #expect(denied.stderr.contains("./data.txt: Permission denied"))
        let directory = try trace(["/tmp"])
        #expect(directory.status == 126)
        #expect(directory.stderr.contains("/tmp: Is a directory"))
    }

    @Test("sysmirror inside sysmirror: the second filter is refused with EBUSY, explained")
    func nested() throws {
        let outcome = try trace([fixtures.sysmirror, "trace", "--", "/bin/busybox", "true"])
        #expect(outcome.status == 1)
        #expect(outcome.stderr.contains("already under a seccomp user-notify filter"))
    }

    @Test(
        "Incoming traffic's options are checked before anything starts",
        arguments: [
            (["--incoming", "grab"], "grab"),
            (["--steal-header", "("], "--steal-header \"(\" is not a regular expression"),
            (["--incoming", "mirror", "--steal-path", "^/api"], "they go with --incoming steal, not mirror"),
            (["--port-map", "80"], "--port-map \"80\": expected LOCAL:REMOTE"),
        ])
    func incomingUsage(options: [String], message: String) throws {
        let token = try fixtures.readableFile("usage-token", "usage-token-0123456789")
        let outcome = try Run.process(
            [fixtures.sysmirror, "trace", "--agent", "unix:/nonexistent", "--token-file", token] + options + [
                "--", "true",
            ], unprivileged: true)
        #expect(outcome.status == 64, "\(outcome.stderr)")
        #expect(outcome.stderr.contains(message), "\(outcome.stderr)")
        let alone = try Run.process(
            [fixtures.sysmirror, "trace", "--incoming", "steal", "--", "true"], unprivileged: true)
        #expect(
            alone.stderr.contains(
                "the incoming options (--incoming, --port-map, --steal-header, --steal-path) need an agent"))
    }

    @Test("Unknown flags and a missing program are usage errors")
    func usageErrors() throws {
        let unknown = try Run.process(
            [fixtures.sysmirror, "trace", "--no-such-flag", "--", "true"], unprivileged: true)
        #expect(unknown.status == 64)
        #expect(unknown.stderr.contains("--no-such-flag"))
        let missing = try Run.process([fixtures.sysmirror, "trace"], unprivileged: true)
        #expect(missing.status == 64)
        #expect(missing.stderr.contains("Missing the program to run. Put it after --"))
        // Without --, a program's own flags could be taken for sysmirror's: the program must follow --.
        let noTerminator = try Run.process(
            [fixtures.sysmirror, "trace", "/bin/busybox", "echo", "--log", "x"], unprivileged: true)
        #expect(noTerminator.status == 64)
        #expect(!FileManager.default.fileExists(atPath: fixtures.path("x")))
    }

    @Test(
        "A log that cannot be written, a missing config or token file: a clear error, no usage, before the program runs"
    )
    func unwritableLog() throws {
        let outcome = try trace(["/bin/busybox", "true"], options: ["--log", "/proc/version/x"])
        #expect(outcome.status == 1)
        #expect(outcome.stderr.contains("cannot write the trace log to /proc/version/x"))
        // A runtime problem, not a misuse of the command line: no usage after it.
        #expect(!outcome.stderr.contains("Usage:"), "\(outcome.stderr)")
        for options in [
            ["--config", "/nonexistent/sysmirror.yaml"],
            ["--agent", "unix:/nonexistent.sock", "--token-file", "/nonexistent/token"],
        ] {
            let failed = try trace(["/bin/busybox", "true"], options: options)
            #expect(failed.status == 1 && failed.stderr.contains("/nonexistent/"), "\(failed.stderr)")
            #expect(
                failed.stderr.contains("The program was not started") && !failed.stderr.contains("Usage:"),
                "\(failed.stderr)")
        }
    }

    @Test("Shell completions for bash, zsh and fish name the subcommands and their options; bash's parses")
    func completions() throws {
        for shell in ["bash", "zsh", "fish"] {
            let script = try Run.process(
                [fixtures.sysmirror, "--generate-completion-script", shell], unprivileged: true)
            #expect(script.status == 0, "\(script.stderr)")
            for word in ["trace", "agent", "doctor", "fs-cache", "watch-limit"] {
                #expect(script.stdout.contains(word), "\(shell) completions lack \(word)")
            }
            if shell == "bash" {
                let checked = try Run.process(["bash", "-n"], stdin: script.stdout, unprivileged: true)
                #expect(checked.status == 0, "\(checked.stderr)")
            }
        }
    }

    @Test("doctor reports the kernel features and that trace can run")
    func doctor() throws {
        let outcome = try Run.process([fixtures.sysmirror, "doctor"], unprivileged: true)
        #expect(outcome.status == 0)
        #expect(outcome.stdout.contains("yes  SECCOMP_IOCTL_NOTIF_ADDFD"))
        #expect(outcome.stdout.contains("trace can run here: yes"))
    }
}
