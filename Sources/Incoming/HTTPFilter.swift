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
            throw HTTPFilterError(description: "\(option) \(pattern.debugDescription) is not a regular expression: \(error)")
        }
    }

    public func matches(_ head: HTTPHead) -> Bool {
        if let path, (try? path.firstMatch(in: String(decoding: head.path, as: UTF8.self))) == nil { return false }
        if let header {
            return head.headerLines.contains { line in
                guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { return false }
                let name = String(decoding: line[..<colon], as: UTF8.self)
                let value = String(decoding: line[(colon + 1)...], as: UTF8.self).trimmingSpaces
                return (try? header.firstMatch(in: "\(name): \(value)")) != nil
            }
        }
        return true
    }
}

public struct HTTPFilterError: Error, Sendable, CustomStringConvertible {
    public let description: String
}
