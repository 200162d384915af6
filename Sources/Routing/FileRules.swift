/// `--fs-mode`: how much of the file system comes from the pod.
public enum FileSystemMode: String, Sendable, CaseIterable {
    /// Everything local, except what the config's lists say.
    case local
    /// Reads remote, anything opened for writing local (the default).
    case read
    /// Reads and writes remote.
    case write
}

/// Where one file operation goes.
public enum FileRoute: Sendable, Equatable {
    case local, remote, notFound
}

/// The config file's regular-expression lists; each overrides the defaults for the paths it matches.
public struct FileOverrides: Sendable, Equatable {
    public var local: [String]
    public var readOnly: [String]
    public var readWrite: [String]
    public var notFound: [String]

    public init(local: [String] = [], readOnly: [String] = [], readWrite: [String] = [], notFound: [String] = []) {
        self.local = local
        self.readOnly = readOnly
        self.readWrite = readWrite
        self.notFound = notFound
    }

    public var isEmpty: Bool { local.isEmpty && readOnly.isEmpty && readWrite.isEmpty && notFound.isEmpty }
}

/// A pattern of the config that is not a valid regular expression.
public struct InvalidPattern: Error, Sendable, CustomStringConvertible {
    public let list: String
    public let pattern: String
    public let reason: String
    public var description: String {
        "file rule \(list): \(pattern.debugDescription) is not a valid regular expression: \(reason)"
    }
}

/// Pure rules: which file operations go to the pod. Paths are absolute and normalized bytes.
///
/// The defaults are tables of byte prefixes and suffixes, so that a decision costs well under a microsecond
/// (docs/architecture.md); a regular expression runs only for lists the user configured.
public struct FileRules: @unchecked Sendable {  // Regex is not Sendable; these are never mutated after init
    public let mode: FileSystemMode
    let notFound: [Path]
    let remoteExceptions: [Path]
    let local: [Path]
    let localSuffixes: [[UInt8]]
    let localComponents: [[UInt8]]
    let overrides: [(FileRouteOverride, Regex<AnyRegexOutput>)]

    enum FileRouteOverride { case local, readOnly, readWrite, notFound }

    /// A path that matches itself and everything below it (`/etc` matches `/etc` and `/etc/hosts`, not `/etcx`).
    struct Path {
        let bytes: [UInt8]
        init(_ text: String) { bytes = Array(text.utf8) }

        func contains(_ path: [UInt8]) -> Bool {
            guard path.count >= bytes.count, path.starts(with: bytes) else { return false }
            return path.count == bytes.count || path[bytes.count] == UInt8(ascii: "/") || bytes == [UInt8(ascii: "/")]
        }
    }

    /// Folders that never come from the pod: the local system, and what interpreters load.
    public static let localFolders = [
        "/proc", "/sys", "/dev", "/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/opt", "/tmp",
        "/var/tmp", "/run", "/home", "/etc", "/nix", "/snap",
    ]
    /// Files of /etc that describe the pod's network identity: read from the pod.
    public static let remoteInEtc = ["/etc/resolv.conf", "/etc/hosts", "/etc/hostname", "/etc/ssl/certs"]
    /// Credentials that must not leak from the laptop into a program that believes it runs in the pod.
    public static let credentialFolders = [
        ".kube", ".aws", ".azure", ".config/gcloud", ".docker", ".oci", ".config/doctl",
    ]
    /// Interpreters' sources and packages, wherever they are.
    public static let interpreterSuffixes = [".py", ".pyc", ".pth", ".so", ".jar", ".class", ".rb", ".pm"]
    public static let interpreterFolders = ["site-packages", "dist-packages", "node_modules", "__pycache__", ".venv"]

    /// - Parameters:
    ///   - home: the user's $HOME: local, except its credential folders, which are not found.
    ///   - workingDirectory: sysmirror's cwd, where the program's sources usually are: local.
    ///   - program: the program's own executable: local.
    public init(
        mode: FileSystemMode, overrides: FileOverrides = FileOverrides(), home: String?, workingDirectory: String?,
        program: String?
    ) throws(InvalidPattern) {
        self.mode = mode
        let home = home.flatMap { $0.hasPrefix("/") && $0 != "/" ? $0 : nil }
        notFound = (home.map { home in Self.credentialFolders.map { Path("\(home)/\($0)") } } ?? [])
        remoteExceptions = Self.remoteInEtc.map(Path.init)
        let personal = [home, workingDirectory.flatMap { $0 == "/" ? nil : $0 }, program].compactMap { $0 }
        local = (Self.localFolders + personal).map(Path.init)
        localSuffixes = Self.interpreterSuffixes.map { Array($0.utf8) }
        localComponents = Self.interpreterFolders.map { Array("/\($0)/".utf8) }
        var compiled: [(FileRouteOverride, Regex<AnyRegexOutput>)] = []
        // The order of precedence when a path matches several lists.
        for (kind, name, patterns) in [
            (FileRouteOverride.notFound, "not_found", overrides.notFound), (.local, "local", overrides.local),
            (.readWrite, "read_write", overrides.readWrite), (.readOnly, "read_only", overrides.readOnly),
        ] where !patterns.isEmpty {
            let joined = patterns.map { "(?:\($0))" }.joined(separator: "|")
            do {
                compiled.append((kind, try Regex(joined)))
            } catch {
                // Name the culprit: compile each one alone.
                for pattern in patterns {
                    do { _ = try Regex(pattern) } catch {
                        throw InvalidPattern(list: name, pattern: pattern, reason: "\(error)")
                    }
                }
                throw InvalidPattern(list: name, pattern: joined, reason: "\(error)")
            }
        }
        self.overrides = compiled
    }

    /// Routes an operation on `path` (absolute, normalized); `writing` when it may change the file.
    public func route(_ path: [UInt8], writing: Bool) -> FileRoute {
        if !overrides.isEmpty, let kind = matchingOverride(path) {
            switch kind {
            case .notFound: return .notFound
            case .local: return .local
            case .readWrite: return .remote
            case .readOnly: return writing ? .local : .remote
            }
        }
        if notFound.contains(where: { $0.contains(path) }) { return .notFound }
        switch mode {
        case .local: return .local
        case .read where writing: return .local
        case .read, .write: return isLocalByDefault(path) ? .local : .remote
        }
    }

    func isLocalByDefault(_ path: [UInt8]) -> Bool {
        if remoteExceptions.contains(where: { $0.contains(path) }) { return false }
        if local.contains(where: { $0.contains(path) }) { return true }
        if localSuffixes.contains(where: { path.count > $0.count && path.reversed().starts(with: $0.reversed()) }) {
            return true
        }
        return localComponents.contains { component in
            path.count >= component.count
                && path.indices.dropLast(component.count - 1).contains { start in
                    path[start..<(start + component.count)].elementsEqual(component)
                }
        }
    }

    func matchingOverride(_ path: [UInt8]) -> FileRouteOverride? {
        let text = String(decoding: path, as: UTF8.self)
        return overrides.first { (try? $0.1.firstMatch(in: text)) != nil }?.0
    }
}
