import AgentLink
import Foundation
import Testing

@Suite("Agent addresses and tokens")
struct AgentAddressTests {
    @Test(
        "Addresses parse as documented",
        arguments: [
            ("unix:/run/agent.sock", AgentAddress.unix(path: "/run/agent.sock")),
            ("7777", .tcp(host: "127.0.0.1", port: 7777)),
            ("0.0.0.0:80", .tcp(host: "0.0.0.0", port: 80)),
            ("localhost:9000", .tcp(host: "localhost", port: 9000)),
            ("[::1]:8080", .tcp(host: "::1", port: 8080)),
        ])
    func parses(text: String, expected: AgentAddress) throws {
        #expect(try AgentAddress(parsing: text) == expected)
        #expect(try AgentAddress(parsing: expected.description) == expected)
    }

    @Test(
        "Bad addresses say what is wrong",
        arguments: [
            ("unix:", "path is empty"), ("0", "1 to 65535"), ("65536", "1 to 65535"), ("host:", "1 to 65535"),
            (":80", "host is empty"), ("::1:80", "expected unix:/path"), ("[::1]80", "[IPv6]:PORT"),
            ("unix:/" + String(repeating: "x", count: 120), "shorter than 108"),
        ])
    func rejects(text: String, problem: String) {
        #expect {
            try AgentAddress(parsing: text)
        } throws: { error in
            "\(error)".contains(problem) && "\(error)".contains(text.prefix(20))
        }
    }

    @Test func tokensLoseTrailingWhitespaceAndMustNotBeEmpty() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("token-\(getpid())").path
        defer { unlink(path) }
        try "s3cret \n\n".write(toFile: path, atomically: false, encoding: .utf8)
        #expect(try TokenFile.read(path) == Array("s3cret".utf8))
        try " \n".write(toFile: path, atomically: false, encoding: .utf8)
        #expect(throws: TokenFileError.self) { try TokenFile.read(path) }
        #expect { try TokenFile.read("/nonexistent/token") } throws: { "\($0)".contains("No such file") }
    }
}
