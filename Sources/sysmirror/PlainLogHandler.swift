import Logging

#if canImport(Glibc)
    import Glibc
#endif

/// sysmirror's own messages as a user reads them on a terminal: `sysmirror: warning: ...`, no timestamps.
struct PlainLogHandler: LogHandler {
    let label: String
    var name = "sysmirror"
    var timestamps = false
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
        let line = "\(timestamps ? Self.now() + " " : "")\(name): \(prefix)\(event.message)\(details)\n"
        // One write(2) per message, so lines from several threads never interleave.
        var bytes = Array(line.utf8)
        _ = write(2, &bytes, bytes.count)
    }

    /// UTC, to the millisecond, as ISO 8601.
    static func now() -> String {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        var parts = tm()
        var seconds = time.tv_sec
        gmtime_r(&seconds, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let millis = String(1000 + time.tv_nsec / 1_000_000).dropFirst()
        return
            "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(millis)Z"
    }
}
