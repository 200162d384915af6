#if canImport(Glibc)
    import Glibc
#endif

/// Finds the program to run as a shell would, so that errors read and exit as a shell's do.
public enum ExecutableLookup {
    public enum Result: Equatable, Sendable {
        case found(String)
        /// 127 and "command not found" (a bare name not on PATH).
        case commandNotFound
    }

    /// A name with a slash is used as given; a bare name is searched on `searchPath`, taking the first
    /// executable regular file, else the first file found (whose exec then fails as the shell's would).
    public static func resolve(_ name: String, searchPath: String?) -> Result {
        if name.contains("/") { return .found(name) }
        guard !name.isEmpty else { return .commandNotFound }
        var firstFound: String?
        for directory in (searchPath ?? "/usr/local/bin:/usr/bin:/bin").split(
            separator: ":", omittingEmptySubsequences: false)
        {
            let candidate = (directory.isEmpty ? "." : String(directory)) + "/" + name
            var info = stat()
            guard stat(candidate, &info) == 0, info.st_mode & S_IFMT == S_IFREG else { continue }
            if access(candidate, X_OK) == 0 { return .found(candidate) }
            if firstFound == nil { firstFound = candidate }
        }
        return firstFound.map(Result.found) ?? .commandNotFound
    }

    /// True when `path` names a directory (execve then fails with EACCES; shells say "Is a directory").
    public static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFDIR
    }
}
