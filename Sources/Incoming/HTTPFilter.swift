/// Which stolen HTTP requests go to the developer's program (`--steal-header`, `--steal-path`): a request
/// matches when every condition given holds. The others go to the pod's application.
public struct HTTPFilter: @unchecked Sendable {  // Regex holds no mutable state
    /// Matched against each header line as `Name: value`.
    let header: Regex<AnyRegexOutput>?
    /// Matched against the request's path (without the query).
    let path: Regex<AnyRegexOutput>?

    /// Nil when neither pattern is given; throws a message naming the bad pattern.
    public init?(headerPattern: String, pathPattern: String) throws(HTTPFilterError) {
        guard !(headerPattern.isEmpty && pathPattern.isEmpty) else { return nil }
        header = try Self.compile(headerPattern, "--steal-header")
        path = try Self.compile(pathPattern, "--steal-path")
    }

    static func compile(_ pattern: String, _ option: String) throws(HTTPFilterError) -> Regex<AnyRegexOutput>? {
        guard !pattern.isEmpty else { return nil }
        do {
            return try Regex(pattern)
        } catch {
            throw HTTPFilterError(
                description: "\(option) \(pattern.debugDescription) is not a regular expression: \(error)")
        }
    }

    /// A request as filters see it, made once however many filters it meets: its path, and each header
    /// line as `Name: value`, the value without the whitespace around it.
    public struct Subject {
        let path: String
        let headerLines: [String]

        public init(_ head: HTTPHead) {
            path = String(decoding: head.path, as: UTF8.self)
            headerLines = head.headerLines.compactMap { line in
                guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { return nil }
                return String(
                    decoding: line[..<colon] + Array(": ".utf8) + line[(colon + 1)...].trimmingWhitespace,
                    as: UTF8.self)
            }
        }
    }

    public func matches(_ subject: Subject) -> Bool {
        if let path, (try? path.firstMatch(in: subject.path)) == nil { return false }
        if let header { return subject.headerLines.contains { (try? header.firstMatch(in: $0)) != nil } }
        return true
    }
}

public struct HTTPFilterError: Error, Sendable, CustomStringConvertible {
    public let description: String
}
