#if canImport(Glibc)
    import Glibc
#endif

/// Pure rules for the program's environment: the local one, with the pod's merged over it.
public struct EnvironmentMerge: Sendable, Equatable {
    /// Variables that describe the developer's machine and session, never taken from the pod.
    public static let localOnly = [
        "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "COLORTERM", "LANG", "LANGUAGE", "LC_*", "PWD", "OLDPWD",
        "SHLVL", "_", "DISPLAY", "WAYLAND_DISPLAY", "SSH_*", "XDG_*", "TMPDIR", "EDITOR", "VISUAL", "PAGER",
        "LD_*", "DBUS_*", "MAIL", "TZ", "GOPATH", "GOCACHE", "GOROOT", "KUBECONFIG",
    ]

    /// Glob patterns (fnmatch): only pod variables matching one of them are taken, when not empty.
    public var include: [String]
    /// Glob patterns: pod variables matching one of them are not taken.
    public var exclude: [String]

    public init(include: [String] = [], exclude: [String] = []) {
        self.include = include
        self.exclude = exclude
    }

    /// Whether the pod's variable `name` replaces the local one.
    public func takes(_ name: String) -> Bool {
        if Self.localOnly.contains(where: { Self.matches($0, name) }) { return false }
        if exclude.contains(where: { Self.matches($0, name) }) { return false }
        return include.isEmpty || include.contains { Self.matches($0, name) }
    }

    /// The program's environment: `local` in its order, each pod variable it takes replacing the local one or
    /// appended. Entries are `KEY=VALUE`; entries without `=` are kept as they are.
    public func merge(local: [String], pod: [String]) -> [String] {
        var result = local
        var index: [Substring: Int] = [:]
        for (position, entry) in result.enumerated() { index[Self.name(of: entry)] = position }
        for entry in pod {
            let name = Self.name(of: entry)
            guard !name.isEmpty, entry.contains("="), takes(String(name)) else { continue }
            if let position = index[name] {
                result[position] = entry
            } else {
                index[name] = result.count
                result.append(entry)
            }
        }
        return result
    }

    static func name(of entry: String) -> Substring { entry.prefix { $0 != "=" } }

    static func matches(_ pattern: String, _ name: String) -> Bool { fnmatch(pattern, name, 0) == 0 }
}
