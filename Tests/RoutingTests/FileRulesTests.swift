import Routing
import SyscallDecoding
import Testing

@Suite("File rules")
struct FileRulesTests {
    let rules = try! FileRules(
        mode: .read, home: "/home/dev", workingDirectory: "/work/app", program: "/work/bin/server")

    func route(_ path: String, writing: Bool = false, _ rules: FileRules? = nil) -> FileRoute {
        (rules ?? self.rules).route(Array(path.utf8), writing: writing)
    }

    @Test(
        "Local by default: the system, the program, its folder, $HOME, interpreters' files",
        arguments: [
            "/proc/self/maps", "/sys/kernel", "/dev/null", "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2", "/bin/sh", "/sbin/ip", "/opt/tool", "/tmp/x", "/var/tmp/y", "/run/user/1",
            "/home/other/file", "/home/dev/notes", "/work/app/main.go", "/work/app", "/work/bin/server",
            "/etc/passwd", "/etc", "/srv/app/lib/python3.11/site-packages/yaml/__init__.py", "/app/main.py",
            "/app/node_modules/x/index.js", "/srv/module.so",
        ])
    func local(path: String) {
        #expect(route(path) == .local)
    }

    @Test(
        "Remote by default: the pod's network identity in /etc, and everything else",
        arguments: [
            "/etc/resolv.conf", "/etc/hosts", "/etc/hostname", "/etc/ssl/certs/ca-certificates.crt",
            "/var/run/secrets/kubernetes.io/serviceaccount/token", "/config/app.yaml", "/", "/data", "/etcetera",
            "/work/bin/server2", "/procfs",
        ])
    func remote(path: String) {
        #expect(route(path) == .remote)
    }

    @Test(
        "Credentials are not found",
        arguments: ["/home/dev/.kube/config", "/home/dev/.aws", "/home/dev/.config/gcloud/x"])
    func notFound(path: String) {
        #expect(route(path) == .notFound)
    }

    @Test func modesDecideWrites() throws {
        #expect(route("/data/out", writing: true) == .local)
        let write = try FileRules(mode: .write, home: nil, workingDirectory: nil, program: nil)
        #expect(route("/data/out", writing: true, write) == .remote)
        #expect(route("/tmp/out", writing: true, write) == .local)
        let local = try FileRules(mode: .local, home: "/home/dev", workingDirectory: nil, program: nil)
        #expect(route("/data/in", local) == .local)
        #expect(route("/home/dev/.kube/config", local) == .notFound)
    }

    @Test func overridesComeFirstInTheirOrder() throws {
        let rules = try FileRules(
            mode: .read,
            overrides: FileOverrides(
                local: [#"^/data/cache"#], readOnly: [#"^/etc/app/"#], readWrite: [#"\.db$"#], notFound: [#"secret"#]),
            home: nil, workingDirectory: nil, program: nil)
        #expect(route("/data/cache/x", rules) == .local)
        #expect(route("/data/other", rules) == .remote)
        #expect(route("/etc/app/config", rules) == .remote)
        #expect(route("/etc/app/config", writing: true, rules) == .local)
        #expect(route("/tmp/state.db", writing: true, rules) == .remote)
        #expect(route("/var/run/secrets/token", rules) == .notFound)
        #expect(route("/data/cache/secret.db", rules) == .notFound)
    }

    @Test func anInvalidPatternIsNamed() {
        #expect {
            try FileRules(
                mode: .read, overrides: FileOverrides(local: ["ok", "(unclosed"]), home: nil, workingDirectory: nil,
                program: nil)
        } throws: { error in
            "\(error)".contains("local") && "\(error)".contains("(unclosed")
        }
    }

    @Test(
        "Paths are made absolute lexically",
        arguments: [
            ("a/b", "/w", "/w/a/b"), ("./a//b/", "/w", "/w/a/b/"), ("a/.", "/w", "/w/a/"), ("../../../x", "/w/d", "/x"),
            ("/abs/./p", "/w", "/abs/p"),
            ("..", "/", "/"), ("", "/w", "/w/"), ("a/../..", "/w/d", "/w/"),
        ])
    func normalize(path: String, base: String, expected: String) {
        #expect(PathNormalizer.absolute(Array(path.utf8), base: Array(base.utf8)) == Array(expected.utf8))
    }

    @Test func fileCallsAreReadFromTheirArguments() throws {
        let stat = DecodedSyscall(
            spec: SyscallTable.x86_64[.newfstatat]!,
            values: [.integer(3), .string(Array("x".utf8)), .integer(0x7000), .integer(0x100)])
        let call = try #require(FileCall(stat))
        #expect(call.operation == .stat(followSymlinks: false, buffer: 0x7000, layout: .stat))
        #expect(call.directory == 3)
        #expect(call.isRelative)
        let fstat = DecodedSyscall(
            spec: SyscallTable.x86_64[.newfstatat]!,
            values: [.integer(3), .string([]), .integer(0x7000), .integer(0x1000)])
        #expect(FileCall(fstat) == nil)
        let creat = DecodedSyscall(
            spec: SyscallTable.x86_64[.creat]!, values: [.string(Array("/o".utf8)), .integer(0o644)])
        #expect(try #require(FileCall(creat)).isWriting)
    }
}

@Suite("Environment merge")
struct EnvironmentMergeTests {
    @Test func podVariablesReplaceOrJoinExceptTheLocalSet() {
        let merged = EnvironmentMerge().merge(
            local: ["PATH=/usr/bin", "HOME=/home/dev", "DB=local", "SSH_AUTH_SOCK=/s", "KEEP=1"],
            pod: ["PATH=/pod", "DB=pod", "SERVICE_HOST=10.96.0.1", "HOME=/root", "SSH_X=1", "LC_ALL=C", "bad"])
        #expect(
            merged == [
                "PATH=/usr/bin", "HOME=/home/dev", "DB=pod", "SSH_AUTH_SOCK=/s", "KEEP=1", "SERVICE_HOST=10.96.0.1",
            ])
    }

    @Test func includeAndExcludeAreGlobs() {
        let merge = EnvironmentMerge(include: ["DB_*", "API"], exclude: ["DB_PASS*"])
        #expect(merge.takes("DB_HOST"))
        #expect(!merge.takes("DB_PASSWORD"))
        #expect(merge.takes("API"))
        #expect(!merge.takes("APIX"))
        #expect(!merge.takes("PATH"))
    }
}
