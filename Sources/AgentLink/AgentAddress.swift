/// Where an agent listens: `unix:/path`, `HOST:PORT`, `[IPv6]:PORT`, or a bare `PORT` (127.0.0.1).
public enum AgentAddress: Sendable, Equatable, CustomStringConvertible {
    case unix(path: String)
    case tcp(host: String, port: Int)

    /// Parses the `--listen`/`--agent` syntax; the error says what was wrong and what is expected.
    public init(parsing text: String) throws(AgentAddressError) {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            guard !path.isEmpty else { throw AgentAddressError(text, "the unix socket path is empty") }
            guard path.utf8.count < 108 else {
                throw AgentAddressError(text, "a unix socket path must be shorter than 108 bytes")
            }
            self = .unix(path: path)
            return
        }
        let host: String
        let portText: Substring
        if let port = Int(text) {
            (host, portText) = ("127.0.0.1", Substring(String(port)))
        } else if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            guard rest.first == ":" else { throw AgentAddressError(text, "expected [IPv6]:PORT") }
            portText = rest.dropFirst()
        } else if let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":") {
            host = String(text[..<colon])
            portText = text[text.index(after: colon)...]
        } else {
            throw AgentAddressError(text, "expected unix:/path, HOST:PORT or PORT")
        }
        guard let port = Int(portText), (1...65535).contains(port) else {
            throw AgentAddressError(text, "the port must be a number from 1 to 65535")
        }
        guard !host.isEmpty else { throw AgentAddressError(text, "the host is empty") }
        self = .tcp(host: host, port: port)
    }

    public var description: String {
        switch self {
        case .unix(let path): "unix:\(path)"
        case .tcp(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        }
    }
}

public struct AgentAddressError: Error, Sendable, Equatable, CustomStringConvertible {
    public let text: String
    public let problem: String
    init(_ text: String, _ problem: String) {
        self.text = text
        self.problem = problem
    }
    public var description: String { "bad agent address \(text.debugDescription): \(problem)" }
}
