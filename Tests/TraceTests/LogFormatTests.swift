import Foundation
import Testing

/// The trace log's destinations and formats, as a user or a tool reads them.
@Suite("Trace log")
struct LogFormatTests {
    let fixtures = Fixtures.shared

    @Test("JSON: one valid object per line with the documented fields")
    func json() throws {
        let (outcome, log) = try Run.trace(
            [fixtures.path("static-reader"), "data.txt", "0"], options: ["--log-format", "json"])
        #expect(outcome.status == 0)
        #expect(!log.isEmpty)
        var sawPath = false
        for line in log {
            let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            #expect(object["pid"] is Int)
            #expect(object["syscall"] is String)
            #expect(["local", "remote", "not_found", "denied"].contains(object["route"] as? String))
            #expect(object["duration_us"] is Double || object["duration_us"] is Int)
            #expect((object["time"] as? String)?.hasSuffix("Z") == true)
            if object["syscall"] as? String == "openat", object["path"] as? String == "data.txt" { sawPath = true }
        }
        #expect(sawPath)
    }

    @Test("JSON network events carry the address")
    func jsonAddress() throws {
        let (_, log) = try Run.trace([fixtures.path("network")], options: ["--log-format", "json"])
        let connects = log.filter { $0.contains(#""syscall":"connect""#) }
        #expect(connects.count == 2)
        #expect(connects.allSatisfy { $0.contains(#""address":"127.0.0.1:"#) })
    }

    @Test("The log goes to standard error by default, and --quiet silences it")
    func destinations() throws {
        let program = [fixtures.path("static-reader"), "data.txt", "0"]
        let loud = try Run.process([fixtures.sysmirror, "trace", "--"] + program, unprivileged: true)
        #expect(loud.stdout == "pod file\n")
        #expect(loud.stderr.contains(#""data.txt", O_RDONLY) → local"#))
        let quiet = try Run.process([fixtures.sysmirror, "trace", "--quiet", "--"] + program, unprivileged: true)
        #expect(quiet.stdout == "pod file\n")
        #expect(quiet.stderr.isEmpty)
        let dash = try Run.process(
            [fixtures.sysmirror, "trace", "--quiet", "--log", "-", "--"] + program, unprivileged: true)
        #expect(dash.stderr.contains("data.txt"))
    }

    @Test("A log reader that goes away does not stop the program")
    func closedLogPipe() throws {
        let traced = "\(fixtures.sysmirror) trace -- \(fixtures.path("gofixture")) many 50 data.txt"
        let command =
            "(\(traced) 2>&1 >/dev/null; echo $? > status.$$) | head -c 10 >/dev/null; cat status.$$; rm status.$$"
        let outcome = try Run.process(["/bin/busybox", "sh", "-c", command], unprivileged: true)
        #expect(outcome.stdout == "0\n")
    }
}
