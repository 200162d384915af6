/// The trace log's line formats. Both are documented in docs/trace-log.md.
public enum TraceFormat: String, Sendable, CaseIterable {
    /// Reads like strace: `[pid 42] openat(AT_FDCWD, "/etc/hosts", O_RDONLY|O_CLOEXEC) → local 1.2µs`.
    case text
    /// One JSON object per line.
    case json

    /// Appends the event as one line, with its newline.
    public func append(_ event: TraceEvent, to out: inout LineBuffer) {
        switch self {
        case .text: Self.appendText(event, to: &out)
        case .json: Self.appendJSON(event, to: &out)
        }
    }

    /// The event as one line, with its newline.
    public func line(_ event: TraceEvent) -> String {
        var out = LineBuffer()
        append(event, to: &out)
        return String(decoding: out.bytes, as: UTF8.self)
    }

    static func appendText(_ event: TraceEvent, to out: inout LineBuffer) {
        out.append("[pid ")
        out.append(decimal: Int64(event.pid))
        out.append("] ")
        out.append(event.syscall)
        out.append("(")
        if let arguments = event.arguments {
            ArgumentText.appendList(arguments, to: &out)
        } else {
            out.append("...")
        }
        out.append(")")
        switch event.outcome {
        case .continued: break
        case .returned(let value):
            out.append(" = ")
            out.append(decimal: value)
        case .failed(let errno):
            out.append(" = -1 ")
            out.append(Names.errno(errno))
            out.append(" (")
            out.append(ErrnoText.message(errno))
            out.append(")")
        case .interrupted:
            out.append(" = ? <interrupted>")
        }
        out.append(" → ")
        out.append(event.route.name)
        out.append(" ")
        appendMicroseconds(event.durationNanos, to: &out)
        out.append("µs")
        if let note = event.note {
            out.append(" (")
            out.append(note)
            out.append(")")
        }
        out.append("\n")
    }

    static func appendJSON(_ event: TraceEvent, to out: inout LineBuffer) {
        out.append("{\"time\":\"")
        Timestamp.appendRFC3339(nanoseconds: event.time, to: &out)
        out.append("\",\"pid\":")
        out.append(decimal: Int64(event.pid))
        out.append(",\"syscall\":")
        JSONText.appendQuoted(event.syscall.utf8, to: &out)
        out.append(",\"route\":\"")
        out.append(event.route.name)
        out.append("\"")
        if let decoded = event.arguments {
            if let path = decoded.path {
                out.append(",\"path\":")
                JSONText.appendQuoted(path, to: &out)
            }
            if let address = decoded.socketAddress {
                out.append(",\"address\":")
                JSONText.appendQuoted(address.description.utf8, to: &out)
            }
            var arguments = LineBuffer()
            ArgumentText.appendList(decoded, to: &arguments)
            out.append(",\"args\":")
            JSONText.appendQuoted(arguments.bytes, to: &out)
        }
        switch event.outcome {
        case .continued: break
        case .returned(let value):
            out.append(",\"result\":")
            out.append(decimal: value)
        case .failed(let errno):
            out.append(",\"result\":-1,\"errno\":\"")
            out.append(Names.errno(errno))
            out.append("\"")
        case .interrupted:
            out.append(",\"interrupted\":true")
        }
        out.append(",\"duration_us\":")
        appendMicroseconds(event.durationNanos, to: &out)
        if let note = event.note {
            out.append(",\"note\":")
            JSONText.appendQuoted(note.utf8, to: &out)
        }
        out.append("}\n")
    }

    /// Microseconds with one decimal.
    static func appendMicroseconds(_ nanoseconds: UInt64, to out: inout LineBuffer) {
        let tenths = (nanoseconds + 50) / 100
        out.append(unsigned: tenths / 10)
        out.append(".")
        out.append(unsigned: tenths % 10)
    }
}

/// JSON strings as RFC 8259 requires. Input bytes that are not valid UTF-8 become U+FFFD: the exact bytes
/// stay visible in the `args` field, where the text format escapes them.
enum JSONText {
    static func appendQuoted(_ bytes: some Collection<UInt8>, to out: inout LineBuffer) {
        out.append("\"")
        if bytes.allSatisfy({ $0 >= 0x20 && $0 < 0x80 && $0 != UInt8(ascii: "\"") && $0 != UInt8(ascii: "\\") }) {
            out.append(bytes: bytes)  // nothing to escape: copy whole
        } else if bytes.allSatisfy({ $0 < 0x80 }) {
            for byte in bytes { appendEscaped(Unicode.Scalar(byte), to: &out) }
        } else {
            for scalar in String(decoding: bytes, as: UTF8.self).unicodeScalars { appendEscaped(scalar, to: &out) }
        }
        out.append("\"")
    }

    static func appendEscaped(_ scalar: Unicode.Scalar, to out: inout LineBuffer) {
        switch scalar {
        case "\"": out.append("\\\"")
        case "\\": out.append("\\\\")
        case "\n": out.append("\\n")
        case "\r": out.append("\\r")
        case "\t": out.append("\\t")
        case _ where scalar.value < 0x20:
            out.append("\\u00")
            if scalar.value < 0x10 { out.append("0") }
            out.append(unsigned: UInt64(scalar.value), radix: 16)
        case _ where scalar.isASCII:
            out.append(byte: UInt8(scalar.value))
        default:
            out.append(String(scalar))
        }
    }
}

enum Timestamp {
    /// `2026-11-27T01:12:27.123456Z`: UTC, microseconds.
    static func appendRFC3339(nanoseconds: UInt64, to out: inout LineBuffer) {
        let seconds = Int64(nanoseconds / 1_000_000_000)
        let micros = nanoseconds / 1000 % 1_000_000
        let secondOfDay = UInt64(seconds % 86_400)
        let (year, month, day) = civil(daysSinceEpoch: seconds / 86_400)
        func padded(_ value: UInt64, _ width: Int) {
            var digits = 1
            var limit: UInt64 = 10
            while value >= limit { digits += 1; limit *= 10 }
            for _ in digits..<max(width, digits) { out.append("0") }
            out.append(unsigned: value)
        }
        padded(UInt64(year), 4)
        out.append("-")
        padded(UInt64(month), 2)
        out.append("-")
        padded(UInt64(day), 2)
        out.append("T")
        padded(secondOfDay / 3600, 2)
        out.append(":")
        padded(secondOfDay / 60 % 60, 2)
        out.append(":")
        padded(secondOfDay % 60, 2)
        out.append(".")
        padded(micros, 6)
        out.append("Z")
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
