import Foundation
import Synchronization
import Testing

/// The file cache (docs/configuration.md, "The file cache"): answers the agent keeps true. A file changed in
/// the pod, in every way a pod changes files, is seen changed by the next read within the bound; repeated
/// reads are answered from the cache; what cannot be watched is not cached, and still right.
@Suite("The file cache", .enabled(if: PodStandIn.isAvailable, "needs root for namespaces"), .serialized)
final class FileCacheTests {
    let pod: PodStandIn
    let fixtures = Fixtures.shared
    /// 50 ms plus a round trip (well under a millisecond here), plus the watching program's own 5 ms poll
    /// and room for a loaded machine's scheduling.
    static let bound = 0.150

    init() throws { pod = try PodStandIn() }
    deinit { pod.tearDown() }

    func podFile(_ path: String) -> URL { pod.root.appendingPathComponent(path) }

    /// A traced program that reads `path` every 5 ms and prints, with the wall time, each content (and mode)
    /// it sees change, until `done` exists; `listing`: the directory's sorted names instead.
    func watcher(_ path: String, listing: Bool, started: String, done: String) -> [String] {
        let seen =
            listing
            ? "' '.join(sorted(os.listdir('\(path)')))"
            : "'%s %o' % (open('\(path)').read().strip(), os.stat('\(path)').st_mode & 0o777)"
        return [
            "/usr/bin/python3", "-c",
            """
            import os, time
            last = None
            open('\(started)', 'w').close()
            while not os.path.exists('\(done)'):
                try:
                    seen = \(seen)
                except OSError as error:
                    seen = 'error %d' % error.errno
                if seen != last:
                    print('%.4f %s' % (time.time(), seen), flush=True)
                    last = seen
                time.sleep(0.005)
            """,
        ]
    }

    /// Runs `changes` (each a description, the change, and what the program must then see) against a watching
    /// program; checks that each is seen within the bound and never undone. The program's outcome and log.
    @discardableResult
    func expectSeen(_ path: String, listing: Bool = false, _ changes: [(String, () throws -> Void, String)]) throws
        -> (Outcome, [String])
    {
        let started = fixtures.path("cache-started-\(UUID().uuidString)"),
            done = fixtures.path("cache-done-\(UUID().uuidString)")
        defer { for file in [started, done] { try? FileManager.default.removeItem(atPath: file) } }
        let traced = LinkCutTests.traceInBackground(
            watcher(path, listing: listing, started: started, done: done), pod: pod, agentAddress: "unix:\(pod.socket)")
        try PodStandIn.waitUntil("the watching program") { FileManager.default.fileExists(atPath: started) }
        usleep(300_000)
        var changedAt: [(String, Double, String)] = []
        for (what, change, seen) in changes {
            let time = Date().timeIntervalSince1970
            try change()
            changedAt.append((what, time, seen))
            usleep(400_000)
        }
        FileManager.default.createFile(atPath: done, contents: nil)
        let (outcome, log) = try #require(traced(30))
        let lines = outcome.stdout.split(separator: "\n").map { $0.split(separator: " ", maxSplits: 1) }
        for (what, time, seen) in changedAt {
            let first = lines.firstIndex { $0.count == 2 && $0[1] == seen && (Double($0[0]) ?? 0) >= time - 0.01 }
            #expect(first != nil, "\(what): never saw \(seen): \(outcome.stdout)\(outcome.stderr)")
            guard let first else { continue }
            let delay = (Double(lines[first][0]) ?? 0) - time
            #expect(delay <= Self.bound, "\(what): seen after \(Int(delay * 1000)) ms")
        }
        // Nothing old comes back: the program's last view is the last change's.
        #expect(lines.last.map { String($0.last ?? "") } == changedAt.last?.2, "\(outcome.stdout)")
        #expect(log.contains { $0.contains(path) && $0.contains("→ cached") }, "the reads were not cached")
        return (outcome, log)
    }

    @Test("A file written in place, replaced by rename, its mode changed, deleted and made again: each seen at once")
    func changesInThePod() throws {
        let file = podFile("config/app.yaml")
        try expectSeen(
            "/config/app.yaml",
            [
                (
                    "written in place", { try "listen: 9090".write(to: file, atomically: false, encoding: .utf8) },
                    "listen: 9090 644"
                ),
                (
                    "replaced by rename", { try "listen: 7070".write(to: file, atomically: true, encoding: .utf8) },
                    "listen: 7070 644"
                ),
                ("mode changed", { chmod(file.path, 0o600) }, "listen: 7070 600"),
                ("deleted", { try FileManager.default.removeItem(at: file) }, "error 2"),
                (
                    "made again", { try "listen: 6060".write(to: file, atomically: false, encoding: .utf8) },
                    "listen: 6060 644"
                ),
            ])
    }

    @Test("A path in folders that do not exist is kept missing, and seen once the pod makes them and it")
    func missingFolders() throws {
        let folder = podFile("config/new")
        let (outcome, log) = try expectSeen(
            "/config/new/deep/app.yaml",
            [
                (
                    "made with its folders",
                    {
                        try FileManager.default.createDirectory(
                            at: folder.appendingPathComponent("deep"), withIntermediateDirectories: true)
                        try "listen: 5050".write(
                            to: folder.appendingPathComponent("deep/app.yaml"), atomically: false, encoding: .utf8)
                    }, "listen: 5050 644"
                ),
                ("its folders removed", { try FileManager.default.removeItem(at: folder) }, "error 2"),
            ])
        #expect(log.contains { $0.contains("/config/new/deep") && $0.contains("ENOENT") && $0.contains("→ cached") })
        #expect(!outcome.stderr.contains("not cached"), "\(outcome.stderr)")
    }

    @Test("A directory's listing is kept, and a name made or removed in the pod is seen by the next one")
    func listings() throws {
        let made = podFile("data/made.txt")
        try expectSeen(
            "/data", listing: true,
            [
                (
                    "a file made", { try "new".write(to: made, atomically: false, encoding: .utf8) },
                    "a.txt b.txt made.txt nested"
                ),
                ("a file removed", { try FileManager.default.removeItem(at: made) }, "a.txt b.txt nested"),
            ])
    }

    @Test("A directory listed 200 times is one placeholder folder of the session, not 200")
    func oneFolderPerDirectory() throws {
        // The program sees where its directory descriptor is (the session's placeholder), and what the
        // session's folder holds.
        let script = """
            import os
            folders = set()
            for _ in range(200):
                fd = os.open('/data', os.O_RDONLY | os.O_DIRECTORY)
                folders.add(os.readlink('/proc/self/fd/%d' % fd))
                names = sorted(os.listdir(fd))
                os.close(fd)
            print(len(folders), ' '.join(names))
            print(len(os.listdir(os.path.dirname(folders.pop()))))
            """
        let (outcome, log) = try pod.trace(["/usr/bin/python3", "-c", script])
        #expect(outcome.stdout == "1 a.txt b.txt nested\n1\n", "\(outcome.stderr)")
        #expect(log.filter { $0.contains("\"/data\"") && $0.contains("→ cached") }.count >= 199)
    }

    @Test("The kubelet's ConfigMap update (a new directory and the ..data symlink swapped) is seen at once")
    func configMapSwap() throws {
        let volume = podFile("mounted/config")
        try FileManager.default.createDirectory(
            at: volume.appendingPathComponent("..2026_12_01_a"), withIntermediateDirectories: true)
        try "mode: first".write(
            to: volume.appendingPathComponent("..2026_12_01_a/app.yaml"), atomically: false, encoding: .utf8)
        try FileManager.default.createSymbolicLink(
            atPath: volume.appendingPathComponent("..data").path, withDestinationPath: "..2026_12_01_a")
        try FileManager.default.createSymbolicLink(
            atPath: volume.appendingPathComponent("app.yaml").path, withDestinationPath: "..data/app.yaml")
        chmod(volume.appendingPathComponent("..2026_12_01_a/app.yaml").path, 0o644)
        let update = {
            // As the kubelet's atomic writer does it: the new timestamped directory, a new symlink, renamed over.
            let next = volume.appendingPathComponent("..2026_12_01_b")
            try FileManager.default.createDirectory(at: next, withIntermediateDirectories: true)
            try "mode: second".write(to: next.appendingPathComponent("app.yaml"), atomically: false, encoding: .utf8)
            chmod(next.appendingPathComponent("app.yaml").path, 0o644)
            try FileManager.default.createSymbolicLink(
                atPath: volume.appendingPathComponent("..data_tmp").path, withDestinationPath: "..2026_12_01_b")
            guard
                rename(volume.appendingPathComponent("..data_tmp").path, volume.appendingPathComponent("..data").path)
                    == 0
            else {
                throw FixtureError(description: "rename ..data_tmp: \(errno)")
            }
        }
        try expectSeen("/mounted/config/app.yaml", [("..data swapped", update, "mode: second 644")])
    }

    @Test("A static Go program re-reads its token 10,000 times: right each time, and nearly all from the cache")
    func tokenRereads() throws {
        let (outcome, log) = try pod.trace(
            [fixtures.path("gofixture"), "rereads", "10000", "/var/run/secrets/kubernetes.io/serviceaccount/token"])
        #expect(outcome.stdout == "ok 10000 eyJhbGciOiJSUzI1NiJ9.pod-token\n", "\(outcome.stderr)")
        let opens = log.filter { $0.contains("serviceaccount/token") && $0.contains("openat(") }
        #expect(opens.count == 10000)
        #expect(opens.filter { $0.contains("→ cached") }.count >= 9990)
    }

    @Test("A missing path is kept missing: its second open fails from the cache with the pod's errno")
    func missingPaths() throws {
        let script = """
            import os
            for _ in range(2):
                try:
                    open('/data/missing.txt')
                except OSError as error:
                    print(error.errno)
            """
        let (outcome, log) = try pod.trace(["/usr/bin/python3", "-c", script])
        #expect(outcome.stdout == "2\n2\n", "\(outcome.stderr)")
        let opens = log.filter { $0.contains("/data/missing.txt") && $0.contains("openat(") }
        #expect(
            opens.count == 2 && opens.last?.contains("ENOENT") == true && opens.last?.contains("→ cached") == true,
            "\(opens)")
    }

    @Test("fstat of a pod file's descriptor shows its permissions and times, first and kept; ssh-keygen takes its key")
    func descriptorMetadata() throws {
        let key = podFile("data/id_test")
        try PodStandIn.command(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pod", "-f", key.path])
        defer { for file in [key.path, key.path + ".pub"] { try? FileManager.default.removeItem(atPath: file) } }
        chmod(key.path, 0o600)
        try PodStandIn.command(["touch", "-d", "2020-01-02 03:04:05", key.path])
        let script = """
            import os
            for _ in range(2):
                with open('/data/id_test') as key:
                    kept, seen = os.stat('/data/id_test'), os.fstat(key.fileno())
                    print('%o %d %o %d' % (kept.st_mode, kept.st_mtime, seen.st_mode, seen.st_mtime))
            """
        let (outcome, log) = try pod.trace(["/usr/bin/python3", "-c", script])
        let mtime = 1_577_934_245  // 2020-01-02 03:04:05 UTC
        #expect(outcome.stdout == String(repeating: "100600 \(mtime) 100600 \(mtime)\n", count: 2), "\(outcome.stderr)")
        #expect(log.contains { $0.contains("/data/id_test") && $0.contains("openat(") && $0.contains("→ cached") })
        // OpenSSH refuses a private key whose fstat shows access for others: a memfd's 0777 did.
        let (keygen, _) = try pod.trace([
            "/bin/sh", "-c", "ssh-keygen -y -f /data/id_test && ssh-keygen -y -f /data/id_test",
        ])
        let publicKey = try String(contentsOf: URL(fileURLWithPath: key.path + ".pub"), encoding: .utf8)
        #expect(keygen.status == 0, "\(keygen.stderr)")
        #expect(keygen.stdout == String(repeating: publicKey, count: 2), "\(keygen.stdout)")
    }

    @Test("Python imports a package from the pod twice: the second process is answered from the cache")
    func pythonImports() throws {
        try FileManager.default.createDirectory(at: podFile("app/shop"), withIntermediateDirectories: true)
        try "".write(to: podFile("app/shop/__init__.py"), atomically: false, encoding: .utf8)
        try "PRICE = 42\n".write(to: podFile("app/shop/prices.py"), atomically: false, encoding: .utf8)
        let script = """
            import subprocess, sys
            for _ in range(2):
                subprocess.run([sys.executable, '-B', '-c', "import sys; sys.path.insert(0, '/app'); import shop.prices; print(shop.prices.PRICE)"], check=True)
            """
        // Python modules stay local by default (the developer's code); the pod's /app is asked for here.
        let config = fixtures.path("cache-config-\(pod.name).yaml")
        defer { try? FileManager.default.removeItem(atPath: config) }
        try "fs:\n  read_only: ['^/app/']\n".write(toFile: config, atomically: false, encoding: .utf8)
        chmod(config, 0o644)
        let (outcome, log) = try pod.trace(["/usr/bin/python3", "-c", script], options: ["--config", config])
        #expect(outcome.stdout == "42\n42\n", "\(outcome.stderr)")
        let reads = log.filter { $0.contains("/app/shop/prices.py") && $0.contains("openat(") }
        #expect(reads.count == 2)
        #expect(reads.last?.contains("→ cached") == true, "\(reads)")
    }

    @Test("--fs-mode write: a local write then a read gives what was written; a write in the pod, the pod's")
    func writes() throws {
        let wrote = fixtures.path("cache-wrote-\(pod.name)"), podWrote = fixtures.path("cache-pod-wrote-\(pod.name)")
        defer { for file in [wrote, podWrote] { try? FileManager.default.removeItem(atPath: file) } }
        let script = """
            import os, time
            print(open('/data/a.txt').read().strip())
            with open('/data/a.txt', 'w') as f:
                f.write('from the laptop')
            print(open('/data/a.txt').read())
            open('\(wrote)', 'w').close()
            while not os.path.exists('\(podWrote)'):
                time.sleep(0.01)
            time.sleep(\(Self.bound))
            print(open('/data/a.txt').read())
            """
        let traced = Mutex<(Outcome, [String])?>(nil)
        let ended = DispatchSemaphore(value: 0)
        DispatchQueue.global().async { [pod] in
            traced.withLock {
                $0 = try? pod.trace(["/usr/bin/python3", "-c", script], options: ["--fs-mode", "write"])
            }
            ended.signal()
        }
        try PodStandIn.waitUntil("the local write") { FileManager.default.fileExists(atPath: wrote) }
        #expect(try String(contentsOf: podFile("data/a.txt"), encoding: .utf8) == "from the laptop")
        try "from the pod".write(to: podFile("data/a.txt"), atomically: false, encoding: .utf8)
        FileManager.default.createFile(atPath: podWrote, contents: nil)
        #expect(ended.wait(timeout: .now() + 30) == .success)
        let (outcome, _) = try #require(traced.withLock { $0 })
        #expect(outcome.stdout == "alpha\nfrom the laptop\nfrom the pod\n", "\(outcome.stderr)")
    }

    @Test("Past the agent's watch limit nothing is cached, the log says so once, and reads stay right")
    func watchLimit() throws {
        pod.killAgent()
        try pod.startAgent(arguments: ["--watch-limit", "0"])
        let (outcome, log) = try pod.trace(
            [fixtures.path("gofixture"), "rereads", "50", "/config/app.yaml"])
        #expect(outcome.stdout == "ok 50 listen: 8080\n", "\(outcome.stderr)")
        #expect(!log.contains { $0.contains("→ cached") })
        #expect(outcome.stderr.components(separatedBy: "are not cached").count == 2, "\(outcome.stderr)")
    }

    @Test("--fs-cache off: every read asks the agent")
    func cacheOff() throws {
        let (outcome, log) = try pod.trace(
            [fixtures.path("gofixture"), "rereads", "20", "/config/app.yaml"], options: ["--fs-cache", "off"])
        #expect(outcome.stdout == "ok 20 listen: 8080\n", "\(outcome.stderr)")
        #expect(log.filter { $0.contains("/config/app.yaml") && $0.contains("→ remote") }.count >= 20)
        #expect(!log.contains { $0.contains("→ cached") })
    }
}
