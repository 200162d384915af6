import Logging

#if canImport(Glibc)
    import Glibc
#endif

/// sysmirror's own messages as a user reads them on a terminal: `sysmirror: warning: ...`, no timestamps.
struct PlainLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .notice
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let prefix: String
        switch event.level {
        case .warning: prefix = "warning: "
        case .error, .critical: prefix = "error: "
        default: prefix = ""
        }
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }
        let details =
            merged.isEmpty
            ? ""
            : " (" + merged.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", ") + ")"
        let line = "sysmirror: \(prefix)\(event.message)\(details)\n"
        // One write(2) per message, so lines from several threads never interleave.
        var bytes = Array(line.utf8)
        _ = write(2, &bytes, bytes.count)
    }
}
