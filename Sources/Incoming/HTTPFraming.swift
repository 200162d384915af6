/// Why bytes are not HTTP/1.x as the filter can follow it; the connection is then passed on whole.
public struct HTTPFramingError: Error, Equatable, Sendable, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// The head of an HTTP/1.x request or response: its start line and header lines, as sent.
public struct HTTPHead: Equatable, Sendable {
    /// Bytes of the head, the blank line included.
    public let length: Int
    public let startLine: [UInt8]
    /// `Name: value` lines as sent, without line ends.
    public let headerLines: [[UInt8]]
    /// Larger heads are refused: no real client sends them, and a filter must not buffer without bound.
    public static let maximumLength = 64 << 10

    /// The head at the start of `bytes`; nil while it is incomplete.
    public static func parse(_ bytes: ArraySlice<UInt8>) throws(HTTPFramingError) -> HTTPHead? {
        var lines: [[UInt8]] = []
        var lineStart = bytes.startIndex
        var index = bytes.startIndex
        while index < bytes.endIndex {
            if bytes[index] == UInt8(ascii: "\n") {
                var line = Array(bytes[lineStart..<index])
                if line.last == UInt8(ascii: "\r") { line.removeLast() }
                if line.isEmpty {
                    // Blank lines before a request are allowed (RFC 9112 2.2).
                    if lines.isEmpty {
                        lineStart = index + 1
                        index += 1
                        continue
                    }
                    return HTTPHead(
                        length: index + 1 - bytes.startIndex, startLine: lines[0], headerLines: Array(lines.dropFirst())
                    )
                }
                lines.append(line)
                lineStart = index + 1
            }
            index += 1
            if index - bytes.startIndex > maximumLength { throw HTTPFramingError("a head larger than 64 KiB") }
        }
        return nil
    }

    /// The start line's words: method, target and version of a request; version, status and reason of a
    /// response.
    var words: [ArraySlice<UInt8>] { startLine.split(separator: UInt8(ascii: " "), maxSplits: 2) }

    public var method: [UInt8] { words.first.map(Array.init) ?? [] }
    /// A request's path, without the query.
    public var path: [UInt8] {
        guard words.count > 1 else { return [] }
        return Array(words[1].prefix { $0 != UInt8(ascii: "?") })
    }
    public var status: Int? {
        guard words.count > 1, words[0].starts(with: Array("HTTP/".utf8)) else { return nil }
        return Int(String(decoding: words[1], as: UTF8.self))
    }

    /// The values of header `name` (case-insensitive), trimmed.
    public func values(of name: String) -> [String] {
        let wanted = name.lowercased()
        return headerLines.compactMap { line in
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")),
                String(decoding: line[..<colon], as: UTF8.self).lowercased() == wanted
            else { return nil }
            return String(decoding: line[(colon + 1)...].trimmingWhitespace, as: UTF8.self)
        }
    }

    var isChunked: Bool {
        values(of: "transfer-encoding").last?.lowercased().split(separator: ",").last.map {
            String(decoding: $0.utf8.trimmingWhitespace, as: UTF8.self)
        }
            == "chunked"
    }

    func contentLength() throws(HTTPFramingError) -> Int? {
        guard let text = values(of: "content-length").first else { return nil }
        guard let length = Int(text), length >= 0 else { throw HTTPFramingError("Content-Length \(text)") }
        return length
    }

    /// How a request's body is framed (RFC 9112 6.3).
    public func requestBody() throws(HTTPFramingError) -> BodyFraming {
        if isChunked { return .chunked }
        if !values(of: "transfer-encoding").isEmpty { throw HTTPFramingError("a request body of unknown length") }
        return try contentLength().map { .length($0) } ?? .none
    }

    /// How a response to a request with `requestMethod` is framed.
    public func responseBody(requestMethod: [UInt8]) throws(HTTPFramingError) -> BodyFraming {
        let status = self.status ?? 0
        if requestMethod == Array("HEAD".utf8) || (100..<200).contains(status) || status == 204 || status == 304 {
            return .none
        }
        if isChunked { return .chunked }
        return try contentLength().map { .length($0) } ?? .untilClose
    }
}

/// Where a message's body ends.
public enum BodyFraming: Equatable, Sendable {
    case none
    case length(Int)
    case chunked
    /// A response without a length: it ends when the server closes.
    case untilClose
}

/// Follows a body through the bytes that carry it, to tell where it ends.
public struct BodyReader: Sendable {
    enum Chunked: Equatable, Sendable {
        case size(digits: Int, value: Int, inExtension: Bool)
        case data(remaining: Int)
        case dataEnd(remaining: Int)
        case trailer(lineLength: Int)
    }

    private var remaining: Int?
    private var chunked: Chunked?
    public private(set) var isComplete: Bool

    public init(_ framing: BodyFraming) {
        switch framing {
        case .none: isComplete = true
        case .length(let count): (remaining, isComplete) = (count, count == 0)
        case .chunked: (chunked, isComplete) = (.size(digits: 0, value: 0, inExtension: false), false)
        case .untilClose: isComplete = false
        }
    }

    /// How many of `bytes` belong to the body (all of them, until it is complete).
    public mutating func consume(_ bytes: ArraySlice<UInt8>) throws(HTTPFramingError) -> Int {
        guard !isComplete else { return 0 }
        if let left = remaining {
            let taken = min(left, bytes.count)
            remaining = left - taken
            isComplete = remaining == 0
            return taken
        }
        guard var state = chunked else { return bytes.count }
        var index = bytes.startIndex
        while index < bytes.endIndex && !isComplete {
            let byte = bytes[index]
            switch state {
            case .data(let left):
                let taken = min(left, bytes.endIndex - index)
                index += taken
                state = left == taken ? .dataEnd(remaining: 2) : .data(remaining: left - taken)
                continue
            case .size(let digits, let value, let inExtension):
                if byte == UInt8(ascii: "\n") {
                    guard digits > 0 else { throw HTTPFramingError("a chunk without a size") }
                    state = value == 0 ? .trailer(lineLength: 0) : .data(remaining: value)
                } else if inExtension || byte == UInt8(ascii: "\r") {
                    break
                } else if byte == UInt8(ascii: ";") || byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") {
                    state = .size(digits: digits, value: value, inExtension: true)
                } else if let digit = Self.hexValue(byte), digits < 15 {
                    state = .size(digits: digits + 1, value: value << 4 | digit, inExtension: false)
                } else {
                    throw HTTPFramingError("a bad chunk size")
                }
            case .dataEnd(let left):
                if byte == UInt8(ascii: "\n") {
                    state = .size(digits: 0, value: 0, inExtension: false)
                } else if byte != UInt8(ascii: "\r") || left == 0 {
                    throw HTTPFramingError("a chunk longer than its size")
                } else {
                    state = .dataEnd(remaining: left - 1)
                }
            case .trailer(let lineLength):
                if byte == UInt8(ascii: "\n") {
                    if lineLength == 0 { isComplete = true }
                    state = .trailer(lineLength: 0)
                } else if byte != UInt8(ascii: "\r") {
                    state = .trailer(lineLength: lineLength + 1)
                }
            }
            index += 1
        }
        chunked = state
        return index - bytes.startIndex
    }

    static func hexValue(_ byte: UInt8) -> Int? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): Int(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): Int(byte - UInt8(ascii: "a")) + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): Int(byte - UInt8(ascii: "A")) + 10
        default: nil
        }
    }
}

extension BidirectionalCollection<UInt8> {
    /// Without the spaces and tabs at either end (HTTP's optional whitespace, RFC 9110 5.6.3).
    var trimmingWhitespace: SubSequence {
        let isWhitespace = { (byte: UInt8) in byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") }
        guard let first = firstIndex(where: { !isWhitespace($0) }), let last = lastIndex(where: { !isWhitespace($0) })
        else { return self[endIndex...] }
        return self[first...last]
    }
}
