import Foundation
import Testing

/// `sysmirror trace --agent` against a real agent serving a pod stand-in: the program reads the pod's files,
/// environment and hostname; everything else stays local.
@Suite("Remote files and environment", .enabled(if: PodStandIn.isAvailable, "needs root for namespaces"))
final class AgentTests {
    let pod: PodStandIn
    let fixtures = Fixtures.shared

    init() throws { pod = try PodStandIn() }
    deinit { pod.tearDown() }

    @Test("A static Go program reads the pod's config, token, directory, hostname and environment")
    func goService() throws {
        let program = [fixtures.path("gofixture"), "pod", "/config/app.yaml", "/data"]
        let (outcome, log) = try pod.trace(program)
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(
            outcome.stdout == """
                config: listen: 8080
                mode: pod
                token: eyJhbGciOiJSUzI1NiJ9.pod-token
                entries: a.txt:file b.txt:file nested:dir
                size: 23 mode: -rw-r--r--
                hostname: \(PodStandIn.hostname)
                DB_HOST: db.default.svc.cluster.local

                """)
        #expect(
            log.contains {
                $0.contains(#"openat(AT_FDCWD, "/config/app.yaml", O_RDONLY|O_CLOEXEC) = "#) && $0.contains("→ remote")
            })
        #expect(log.contains { $0.contains("uname(") && $0.contains("= 0 → remote") })
        // Without sysmirror the same program finds none of it: the files came from the pod.
        #expect(try pod.direct(program).status != 0)
    }

    @Test("200 goroutines open a remote file at once; each open is served and logged once")
    func goroutines() throws {
        let (outcome, log) = try pod.trace([fixtures.path("gofixture"), "many", "200", "/data/a.txt"])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stdout == "ok 200\n")
        let opens = log.filter { $0.contains(#"openat(AT_FDCWD, "/data/a.txt""#) }
        #expect(opens.count == 200)
        // The first ones ask the agent; once one answer is kept, the others open the kept content.
        #expect(opens.allSatisfy { $0.contains("→ remote") || $0.contains("→ cached") })
        #expect(opens.contains { $0.contains("→ remote") })
    }

    @Test("busybox cat, ls, stat and wc see the pod's files")
    func busybox() throws {
        let script = """
            cat /config/app.yaml; ls /data; ls -l /data/nested/c.txt | cut -c1-10; stat -c '%s %F' /data/b.txt \
            /data/nested; wc -c /data/a.txt; cat /data/missing; echo "status $?"; cat /etc/hosts
            """
        let (outcome, _) = try pod.trace(["/bin/busybox", "sh", "-c", script])
        #expect(
            outcome.stdout == """
                listen: 8080
                mode: pod
                a.txt
                b.txt
                nested
                -rw-r--r--
                12 regular file
                4096 directory
                6 /data/a.txt
                status 1
                127.0.0.1 localhost
                10.96.0.99 hosts-only.example

                """, "\(outcome.stderr)")
        #expect(outcome.stderr.contains("can't open '/data/missing': No such file or directory"))
    }

    @Test("python3 reads files, walks a directory, and opens relative to a directory fd of the pod")
    func python() throws {
        let script = """
            import os
            print(open('/data/b.txt').read().strip())
            for top, dirs, files in os.walk('/data'):
                print(top, sorted(dirs), sorted(files))
            print(os.path.getsize('/data/nested/c.txt'), os.path.isdir('/data/nested'), os.path.exists('/data/none'))
            nested = os.open('/data/nested', os.O_RDONLY | os.O_DIRECTORY)
            print(os.stat('c.txt', dir_fd=nested).st_size, open('c.txt', opener=lambda p, f: os.open(p, f, dir_fd=nested)).read().strip())
            print(open('../a.txt', opener=lambda p, f: os.open(p, f, dir_fd=nested)).read().strip())
            import fcntl
            fd = os.open('/data/a.txt', os.O_RDONLY)
            try:
                os.write(fd, b'x')
            except OSError as error:
                print('write refused', error.errno == 9, 'cloexec', fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
            """
        let (outcome, _) = try pod.trace(["python3", "-c", script])
        #expect(
            outcome.stdout == """
                bravo bravo
                /data ['nested'] ['a.txt', 'b.txt']
                /data/nested [] ['c.txt']
                8 True False
                8 charlie
                alpha
                write refused True cloexec 1

                """, "\(outcome.stderr)")
    }

    @Test("The program gets the pod's environment over the local one, except the local set")
    func environment() throws {
        let (outcome, _) = try pod.trace(["/usr/bin/env"], environment: ["DB_HOST": "localhost", "LOCAL_ONLY": "1"])
        let variables = Set(outcome.stdout.split(separator: "\n").map(String.init))
        #expect(variables.contains("DB_HOST=db.default.svc.cluster.local"))
        #expect(variables.contains("GREETING=hello from the pod"))
        #expect(variables.contains("LOCAL_ONLY=1"))
        #expect(variables.contains("PATH=/usr/local/bin:/usr/bin:/bin"))
        #expect(!variables.contains("HOME=/home/pod"))

        let (excluded, _) = try pod.trace(["/usr/bin/env"], options: ["--env-exclude", "GREET*"])
        #expect(excluded.stdout.contains("DB_HOST=db.default.svc.cluster.local"))
        #expect(!excluded.stdout.contains("GREETING="))
        let (none, _) = try pod.trace(["/usr/bin/env"], options: ["--no-remote-env"])
        #expect(!none.stdout.contains("DB_HOST="))
    }

    @Test("A symlink to /../../etc/shadow stays inside the pod's root")
    func escape() throws {
        let (outcome, _) = try pod.trace(["/bin/busybox", "sh", "-c", "cat /config/escape; readlink /config/escape"])
        #expect(outcome.stdout == "pod-shadow-file\n/../../etc/shadow\n", "\(outcome.stderr)")
    }

    @Test("A wrong token is refused before the program runs, and the agent logs it")
    func wrongToken() throws {
        let wrong = try fixtures.readableFile("wrong-token-\(pod.name)", "not the token")
        defer { try? FileManager.default.removeItem(atPath: wrong) }
        let marker = fixtures.path("ran-\(pod.name)")
        let (outcome, _) = try pod.trace(["/bin/busybox", "touch", marker], tokenFile: wrong)
        #expect(outcome.status == 1)
        #expect(outcome.stderr.contains("refused the session: wrong token"))
        #expect(outcome.stderr.contains("The program was not started."))
        #expect(!FileManager.default.fileExists(atPath: marker))
        #expect(pod.agentLogText.contains("refused a session: wrong token"))
    }

    @Test("When the agent dies mid-run, remote calls fail with EIO at once and nothing hangs")
    func agentKilled() throws {
        let marker = fixtures.path("read-\(pod.name)")
        let script = """
            cat /data/a.txt; touch \(marker); while [ -e \(marker) ]; do sleep 0.05; done; cat /data/b.txt; \
            echo "cat $?"; ls /data; echo "ls $?"; echo local > /tmp/x-$$ && cat /tmp/x-$$ && rm /tmp/x-$$
            """
        // Once the program has read one file, the agent dies; then the program goes on.
        let pod = self.pod
        DispatchQueue.global().async {
            try? PodStandIn.waitUntil("the first read", timeout: 20) { FileManager.default.fileExists(atPath: marker) }
            pod.killAgent()
            try? FileManager.default.removeItem(atPath: marker)
        }
        let started = Date()
        let (outcome, log) = try pod.trace(["/bin/busybox", "sh", "-c", script], timeout: 30)
        #expect(Date().timeIntervalSince(started) < 15)
        #expect(outcome.stdout == "alpha\ncat 1\nls 1\nlocal\n", "\(outcome.stderr)")
        #expect(outcome.stderr.contains("/data/b.txt: I/O error") || outcome.stderr.contains("Input/output error"))
        #expect(outcome.stderr.contains("the link to the agent closed"))
        #expect(log.contains { $0.contains(#""/data/b.txt""#) && $0.contains("EIO") && $0.contains("link") })
    }

    @Test("--fs-mode write writes the pod's files, streamed or written back on close; read mode keeps writes local")
    func writeMode() throws {
        let (outcome, log) = try pod.trace(
            ["/bin/busybox", "sh", "-c", "echo one > /data/out.txt && echo two >> /data/out.txt && cat /data/out.txt"],
            options: ["--fs-mode", "write"])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stdout == "one\ntwo\n")
        #expect(
            try String(contentsOf: pod.root.appendingPathComponent("data/out.txt"), encoding: .utf8) == "one\ntwo\n")
        #expect(log.contains { $0.contains(#""/data/out.txt", O_WRONLY|O_CREAT|O_TRUNC"#) && $0.contains("→ remote") })

        // In place: python's r+ and pwrite on a new file are written back when the program closes them, and
        // what the program reads afterwards is what it wrote.
        let script = """
            f = open('/data/a.txt', 'r+'); f.seek(1); f.write('LP'); f.close()
            print(open('/data/a.txt').read().strip())
            import os
            fd = os.open('/data/new.bin', os.O_WRONLY | os.O_CREAT, 0o640)
            os.pwrite(fd, b'0123', 0); os.pwrite(fd, b'zz', 1); os.close(fd)
            print(open('/data/new.bin').read())
            """
        let (inPlace, inPlaceLog) = try pod.trace(["python3", "-c", script], options: ["--fs-mode", "write"])
        #expect(inPlace.stdout == "aLPha\n0zz3\n", "\(inPlace.stderr)")
        #expect(try String(contentsOf: pod.root.appendingPathComponent("data/a.txt"), encoding: .utf8) == "aLPha\n")
        let created = pod.root.appendingPathComponent("data/new.bin").path
        #expect(try String(contentsOfFile: created, encoding: .utf8) == "0zz3")
        #expect((try FileManager.default.attributesOfItem(atPath: created)[.posixPermissions] as? Int) == 0o640)
        #expect(inPlaceLog.contains { $0.contains(#""/data/a.txt", O_RDWR"#) && $0.contains("written back") })

        let (readMode, _) = try pod.trace(["/bin/busybox", "sh", "-c", "echo three > /data/out.txt"])
        #expect(readMode.status != 0)  // local /data does not exist, and the pod's file is untouched
        #expect(
            try String(contentsOf: pod.root.appendingPathComponent("data/out.txt"), encoding: .utf8) == "one\ntwo\n")
    }

    @Test("Config rules override the defaults; credentials are not found")
    func rules() throws {
        let config = try fixtures.readableFile(
            "config-\(pod.name).yaml", "fs:\n  not_found: ['^/data/b']\n  local: ['^/config/']\n")
        defer { try? FileManager.default.removeItem(atPath: config) }
        let home = fixtures.directory.appendingPathComponent("home-\(pod.name)")
        try FileManager.default.createDirectory(
            at: home.appendingPathComponent(".kube"), withIntermediateDirectories: true)
        try "local credentials".write(
            to: home.appendingPathComponent(".kube/config"), atomically: false, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: home) }
        chmod(home.path, 0o755)
        chmod(home.appendingPathComponent(".kube").path, 0o755)
        chmod(home.appendingPathComponent(".kube/config").path, 0o644)
        let (outcome, log) = try pod.trace(
            [
                "/bin/busybox", "sh", "-c",
                "cat /data/a.txt; cat /data/b.txt; cat /config/app.yaml; cat $HOME/.kube/config",
            ],
            options: ["--config", config], environment: ["HOME": home.path])
        #expect(outcome.stdout == "alpha\n", "\(outcome.stderr)")
        #expect(log.contains { $0.contains(#""/data/b.txt""#) && $0.contains("→ not_found") })
        #expect(log.contains { $0.contains(".kube/config") && $0.contains("→ not_found") })
    }

    @Test("The scratch folder of a session whose sysmirror was killed is removed by the next session")
    func abandonedSessionFolder() throws {
        let dead = Process()
        dead.executableURL = URL(fileURLWithPath: "/bin/true")
        try dead.run()
        dead.waitUntilExit()
        let abandoned = "/tmp/sysmirror-session-\(dead.processIdentifier)-\(pod.name)"
        try FileManager.default.createDirectory(atPath: abandoned + "/1", withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: abandoned + "/1/entry", contents: nil)
        try PodStandIn.command(["chown", "-R", "65534:65534", abandoned])
        defer { try? FileManager.default.removeItem(atPath: abandoned) }
        let (outcome, _) = try pod.trace(["/bin/busybox", "cat", "/data/a.txt"])
        #expect(outcome.stdout == "alpha\n")
        #expect(!FileManager.default.fileExists(atPath: abandoned))
    }

    @Test("A large file arrives whole, through a real descriptor, and reads natively")
    func largeFile() throws {
        let size = 64 << 20
        let path = pod.root.appendingPathComponent("data/large.bin")
        FileManager.default.createFile(atPath: path.path, contents: nil)
        let handle = try FileHandle(forWritingTo: path)
        var chunk = Data(count: 1 << 20)
        for index in 0..<(size >> 20) {
            chunk[0] = UInt8(index & 0xff)
            handle.write(chunk)
        }
        try handle.close()
        let expected = try Run.process(["md5sum", path.path], directory: fixtures.directory).stdout.prefix(32)
        let (outcome, log) = try pod.trace([
            "/bin/busybox", "sh", "-c", "md5sum < /data/large.bin; wc -c < /data/large.bin",
        ])
        #expect(outcome.stdout == "\(expected)  -\n\(size)\n", "\(outcome.stderr)")
        #expect(log.filter { $0.contains("large.bin") && $0.contains("read(") }.isEmpty)
    }
}
