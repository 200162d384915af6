import CSysmirror
import LinuxSystem
import Synchronization
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// What the agent serves: a process's root, environment and namespaces (`--pid`), or a directory and an
/// environment file (`--root`, `--env-file`).
public enum TargetSpec: Sendable, Equatable, CustomStringConvertible {
    case process(pid: Int32)
    case directory(root: String, environmentFile: String?)

    public var description: String {
        switch self {
        case .process(let pid): "process \(pid)"
        case .directory(let root, _): "root \(root)"
        }
    }
}

/// Why a target cannot be served.
public struct TargetError: Error, Sendable, CustomStringConvertible {
    public let description: String
}

/// The target, opened: its root for file lookups, and how to read its environment and hostname.
public struct Target: Sendable {
    public let spec: TargetSpec
    public let root: TargetRoot

    public init(_ spec: TargetSpec) throws(TargetError) {
        self.spec = spec
        let directory: String
        switch spec {
        case .process(let pid): directory = "/proc/\(pid)/root"
        case .directory(let root, let environmentFile):
            directory = root
            if let environmentFile, Glibc.access(environmentFile, R_OK) != 0 {
                throw TargetError(description: "cannot read the environment file \(environmentFile): \(currentErrno())")
            }
        }
        do {
            root = try TargetRoot(directory: directory)
        } catch {
            let hint =
                if case .process = spec { " (is the process running, and is the agent allowed to see it?)" } else { "" }
            throw TargetError(description: "cannot open the target's root \(directory): \(error.errno)\(hint)")
        }
    }

    /// The target's environment as `KEY=VALUE` entries.
    public func environment() -> Result<[[UInt8]], SystemCallError> {
        switch spec {
        case .process(let pid):
            return Result { () throws(SystemCallError) in try readFile("/proc/\(pid)/environ") }.map { bytes in
                bytes.split(separator: 0, omittingEmptySubsequences: true).map(Array.init)
            }
        case .directory(_, nil):
            return .success([])
        case .directory(_, let file?):
            return Result { () throws(SystemCallError) in try readFile(file) }.map(Self.parseEnvironmentFile)
        }
    }

    /// `KEY=VALUE` lines; blank lines and `#` comments are skipped, an `export ` prefix is allowed.
    static func parseEnvironmentFile(_ bytes: [UInt8]) -> [[UInt8]] {
        String(decoding: bytes, as: UTF8.self).split(whereSeparator: \.isNewline).compactMap { line in
            var entry = line.drop { $0 == " " || $0 == "\t" }
            if entry.isEmpty || entry.hasPrefix("#") { return nil }
            if entry.hasPrefix("export ") { entry = entry.dropFirst(7) }
            guard let equals = entry.firstIndex(of: "="), equals != entry.startIndex else { return nil }
            return Array(entry.utf8)
        }
    }

    /// The target's hostname: from its UTS namespace (a target process), else its /etc/hostname, else this
    /// machine's.
    public func hostname() -> [UInt8] {
        if case .process(let pid) = spec, let name = Self.hostnameInNamespace(of: pid) { return name }
        if case .success(let root) = root.lookup(Array("/etc/hostname".utf8), flags: O_RDONLY | O_NONBLOCK),
            let bytes = try? Self.readAll(root)
        {
            let name = bytes.prefix { $0 != UInt8(ascii: "\n") && $0 != 0 }
            if !name.isEmpty { return Array(name) }
        }
        return Self.localHostname()
    }

    static func localHostname() -> [UInt8] {
        var names = utsname()
        uname(&names)
        return withUnsafeBytes(of: names.nodename) { Array($0.prefix { $0 != 0 }) }
    }

    /// Whether the agent is already in `pid`'s namespace of this kind ("uts", "net"), as an ephemeral
    /// container is in its pod's: then nothing needs setns, nor the CAP_SYS_ADMIN it takes.
    static func sharesNamespace(_ kind: String, with pid: Int32) -> Bool {
        var own = stat()
        var theirs = stat()
        return stat("/proc/self/ns/\(kind)", &own) == 0 && stat("/proc/\(pid)/ns/\(kind)", &theirs) == 0
            && own.st_ino == theirs.st_ino && own.st_dev == theirs.st_dev
    }

    /// setns on a thread of its own, which then ends: the agent's other threads keep their namespace.
    static func hostnameInNamespace(of pid: Int32) -> [UInt8]? {
        if sharesNamespace("uts", with: pid) { return localHostname() }
        guard
            let namespace = try? OwnedDescriptor(
                taking: systemCall("open(/proc/\(pid)/ns/uts)") { open("/proc/\(pid)/ns/uts", O_RDONLY | O_CLOEXEC) })
        else { return nil }
        let raw = namespace.raw
        let result = Mutex<[UInt8]?>(nil)
        guard
            let thread = try? ThreadHandle.start(
                name: "agent-uts",
                {
                    guard (try? systemCall("setns") { sysm_setns(raw, GNU.newUTSNamespace) }) != nil else { return }
                    let name = localHostname()
                    result.withLock { $0 = name }
                })
        else { return nil }
        thread.join()
        namespace.close()  // only now: the thread used it
        return result.withLock { $0 }
    }

    /// Reads to the end and closes.
    static func readAll(_ fd: FileDescriptor) throws(SystemCallError) -> [UInt8] {
        defer { try? fd.close() }
        return try fd.readToEnd()
    }
}
