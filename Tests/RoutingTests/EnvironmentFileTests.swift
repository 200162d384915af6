import Routing
import Testing

struct EnvironmentFileTests {
    /// Values a dotenv file gets wrong when written naively: spaces, quotes, newlines, `$` and `#`.
    static let awkward = [
        "two words", "it's", #"say "hi""#, "line one\nline two\n", "$HOME ${HOME} $(id)", "a #comment", "#start",
        #"C:\path\ dir"#, #"\'"#, #"\\ "#, "\\n", " padded ", "tab\there", "", "é ü 日本", "a=b", "'", #"\'end"#,
    ]

    @Test func theVariablesAreTheMergesOwn() {
        let variables = EnvironmentFile.variables(
            pod: ["DB=one", "PATH=/pod", "KEY=a=b", "DB=two", "bad", "SSH_X=1", "API_TOKEN=t"],
            merge: EnvironmentMerge(exclude: ["API_*"]))
        #expect(variables.map(\.name) == ["DB", "KEY"])
        #expect(variables.map(\.value) == ["two", "a=b"])
    }

    @Test func safeValuesAreBareAndOthersSingleQuoted() {
        let (text, leftOut) = EnvironmentFile.dotenv([
            ("URL", "postgres://u@db:5432/app?x=1"), ("SPACED", "two words"), ("QUOTE", "it's"), ("EMPTY", ""),
            ("MULTI", "a\nb"),
        ])
        #expect(leftOut.isEmpty)
        #expect(
            text == """
                URL='postgres://u@db:5432/app?x=1'
                SPACED='two words'
                QUOTE='it\\'s'
                EMPTY=''
                MULTI='a
                b'

                """)
        #expect(EnvironmentFile.dotenv([("PLAIN", "db.default.svc:5432")]).text == "PLAIN=db.default.svc:5432\n")
    }

    @Test(arguments: awkward)
    func valuesRoundTrip(_ value: String) throws {
        let (text, _) = EnvironmentFile.dotenv([("FIRST", value), ("SECOND", "after")])
        let read = try DotenvReader.read(text)
        #expect(read.map(\.name) == ["FIRST", "SECOND"])
        #expect(read.first?.value == value, "\(text)")
        #expect(read.last?.value == "after")
    }

    @Test func namesNoDialectSharesAndTrailingBackslashesAreLeftOut() {
        let (text, leftOut) = EnvironmentFile.dotenv([
            ("GOOD_1", "x"), ("my-var", "x"), ("a.b", "x"), ("1ST", "x"), ("_under", "x"), ("", "x"),
            ("DIR", #"C:\dir\"#), ("MID", #"a\b"#),
        ])
        #expect(text == "GOOD_1=x\n_under=x\nMID='a\\\\b'\n")
        #expect(leftOut == ["my-var", "a.b", "1ST", "", "DIR"])
    }

    @Test func jsonEscapesAndKeepsOrder() {
        #expect(EnvironmentFile.json([]) == "{}\n")
        let text = EnvironmentFile.json([("B", "q\"\\\n\t\u{1}"), ("A", "日本")])
        #expect(
            text == """
                {
                  "B": "q\\"\\\\\\n\\t\\u0001",
                  "A": "日本"
                }

                """)
    }
}

/// A reader of the dialect `EnvironmentFile.dotenv` writes, by python-dotenv's rules for the forms it uses:
/// `NAME=VALUE` bare to the end of the line, or `NAME='VALUE'` where `\\` and `\'` are escapes and any other
/// character, newlines too, stands for itself (python-dotenv's `${NAME}` expansion aside). EnvCommandTests
/// reads the same files with python-dotenv itself.
enum DotenvReader {
    struct Malformed: Error {
        let rest: Substring
    }

    static func read(_ text: String) throws -> [(name: String, value: String)] {
        var result: [(name: String, value: String)] = []
        var rest = Substring(text)
        while !rest.isEmpty {
            guard let equals = rest.firstIndex(of: "=") else { throw Malformed(rest: rest) }
            let name = String(rest[..<equals])
            rest = rest[rest.index(after: equals)...]
            var value = ""
            if rest.first == "'" {
                rest = rest.dropFirst()
                while let character = rest.first, character != "'" {
                    rest = rest.dropFirst()
                    if character == "\\", let next = rest.first, next == "\\" || next == "'" {
                        value.append(next)
                        rest = rest.dropFirst()
                    } else {
                        value.append(character)
                    }
                }
                guard rest.first == "'" else { throw Malformed(rest: rest) }
                rest = rest.dropFirst()
                guard rest.first == "\n" else { throw Malformed(rest: rest) }
            } else {
                value = String(rest.prefix { $0 != "\n" })
                rest = rest.dropFirst(value.count)
            }
            rest = rest.dropFirst()
            result.append((name, value))
        }
        return result
    }
}
