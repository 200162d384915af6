/// The trace log's line formats. Both are documented in docs/trace-log.md.
public enum TraceFormat: String, Sendable, CaseIterable {
    /// Reads like strace: `[pid 42] openat(AT_FDCWD, "/etc/hosts", O_RDONLY|O_CLOEXEC) → local 1.2µs`.
    case text
    /// One JSON object per line.
    case json

    /// The event as one line, with its newline.
    public func line(_ event: TraceEvent) -> String {
        switch self {
        case .text: Self.textLine(event)
        case .json: Self.jsonLine(event)
        }
    }

    static func textLine(_ event: TraceEvent) -> String {
        var line = "[pid \(event.pid)] \(event.syscall)("
        line += event.arguments.map(ArgumentText.list) ?? "..."
        line += ")"
        switch event.outcome {
        case .continued: break
        case .returned(let value): line += " = \(value)"
        case .failed(let errno): line += " = -1 \(Names.errno(errno)) (\(ErrnoText.message(errno)))"
        }
        line += " → \(event.route.name) \(durationText(event.durationNanos))"
        if let note = event.note { line += " (\(note))" }
        return line + "\n"
    }

    static func jsonLine(_ event: TraceEvent) -> String {
        var json = JSONObject()
        json.add("time", string: Timestamp.rfc3339(nanoseconds: event.time))
        json.add("pid", number: String(event.pid))
        json.add("syscall", string: event.syscall)
        json.add("route", string: event.route.name)
        if let decoded = event.arguments {
            if let path = decoded.path {
                json.add("path", string: String(decoding: path, as: UTF8.self))
            }
            if let address = decoded.socketAddress {
                json.add("address", string: address.description)
            }
            json.add("args", string: ArgumentText.list(decoded))
        }
        switch event.outcome {
        case .continued: break
        case .returned(let value): json.add("result", number: String(value))
        case .failed(let errno):
            json.add("result", number: "-1")
            json.add("errno", string: Names.errno(errno))
        }
        json.add("duration_us", number: microseconds(event.durationNanos))
        if let note = event.note { json.add("note", string: note) }
        return json.finished() + "\n"
    }

    static func durationText(_ nanoseconds: UInt64) -> String {
        microseconds(nanoseconds) + "µs"
    }

    /// Microseconds with one decimal.
    static func microseconds(_ nanoseconds: UInt64) -> String {
        let tenths = (nanoseconds + 50) / 100
        return "\(tenths / 10).\(tenths % 10)"
    }
}

/// Builds one JSON object, escaping strings as RFC 8259 requires.
struct JSONObject {
    private var text = "{"

    mutating func add(_ key: String, string value: String) {
        add(key, number: Self.quoted(value))
    }

    /// Adds a value that is already JSON (a number).
    mutating func add(_ key: String, number value: String) {
        if text.count > 1 { text += "," }
        text += Self.quoted(key) + ":" + value
    }

    func finished() -> String { text + "}" }

    static func quoted(_ value: String) -> String {
        var out = "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                out += "\\u00" + (scalar.value < 0x10 ? "0" : "") + String(scalar.value, radix: 16)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}

enum Timestamp {
    /// `2026-11-27T01:12:27.123456Z`: UTC, microseconds.
    static func rfc3339(nanoseconds: UInt64) -> String {
        let seconds = Int64(nanoseconds / 1_000_000_000)
        let micros = Int(nanoseconds / 1000 % 1_000_000)
        let days = seconds / 86_400
        let secondOfDay = Int(seconds % 86_400)
        let (year, month, day) = civil(daysSinceEpoch: days)
        func two(_ value: Int) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let fraction = String(micros)
        let padded = String(repeating: "0", count: 6 - fraction.count) + fraction
        return "\(year)-\(two(month))-\(two(day))T\(two(secondOfDay / 3600)):\(two(secondOfDay / 60 % 60)):"
            + "\(two(secondOfDay % 60)).\(padded)Z"
    }

    /// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
    static func civil(daysSinceEpoch: Int64) -> (Int, Int, Int) {
        let z = daysSinceEpoch + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let monthIndex = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * monthIndex + 2) / 5 + 1
        let month = monthIndex < 10 ? monthIndex + 3 : monthIndex - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        return (Int(year), Int(month), Int(day))
    }
}
