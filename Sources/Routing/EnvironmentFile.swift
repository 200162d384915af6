/// The pod's variables that `trace` sets, written for a run configuration that cannot wrap its command
/// (`sysmirror env`): as a dotenv file or a JSON object.
public enum EnvironmentFile {
    public enum Format: String, Sendable, CaseIterable {
        case env, json
    }

    public typealias Variable = (name: String, value: String)

    /// The pod's variables that `merge` takes, in the pod's order, a repeated name's last value winning: the
    /// merge itself over an empty local environment, so that these set over any environment give what
    /// `trace` gives the program.
    public static func variables(pod: [String], merge: EnvironmentMerge) -> [Variable] {
        merge.merge(local: [], pod: pod).map { entry in
            let name = EnvironmentMerge.name(of: entry)
            return (String(name), String(entry.dropFirst(name.count + 1)))
        }
    }

    /// A dotenv file in python-dotenv's dialect, one `NAME=VALUE` a line. A value of only safe characters is
    /// written bare; any other in single quotes, with `\` and `'` escaped by a backslash and newlines kept:
    /// single quotes take no `#` comment and no escape but those two. Left out, and returned: names a dotenv
    /// reader cannot take in every dialect (outside `[A-Za-z_][A-Za-z0-9_]*`), and values that end with a
    /// backslash, which python-dotenv's quoted forms cannot hold (the escaped backslash reads as an escaped
    /// quote, and the value runs on into the next lines).
    public static func dotenv(_ variables: [Variable]) -> (text: String, leftOut: [String]) {
        var text = ""
        var leftOut: [String] = []
        for (name, value) in variables {
            guard isPortableName(name), !value.hasSuffix("\\") else {
                leftOut.append(name)
                continue
            }
            text += name + "=" + quoted(value) + "\n"
        }
        return (text, leftOut)
    }

    /// A JSON object, one member a line, in the variables' order.
    public static func json(_ variables: [Variable]) -> String {
        guard !variables.isEmpty else { return "{}\n" }
        let members = variables.map { "  " + jsonString($0.name) + ": " + jsonString($0.value) }
        return "{\n" + members.joined(separator: ",\n") + "\n}\n"
    }

    static func quoted(_ value: String) -> String {
        if !value.isEmpty && value.unicodeScalars.allSatisfy(isSafe) { return value }
        var result = "'"
        for character in value.unicodeScalars {
            if character == "\\" || character == "'" { result += "\\" }
            result.unicodeScalars.append(character)
        }
        return result + "'"
    }

    /// Characters that mean nothing to any dotenv reader outside quotes.
    static func isSafe(_ character: Unicode.Scalar) -> Bool {
        switch character {
        case "a"..."z", "A"..."Z", "0"..."9", "_", "-", ".", "/", ":", ",", "+", "@", "%", "=", "~", "^": true
        default: false
        }
    }

    static func isPortableName(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, !("0"..."9").contains(first) else { return false }
        return name.unicodeScalars.allSatisfy {
            $0 == "_" || ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0)
        }
    }

    static func jsonString(_ text: String) -> String {
        var result = "\""
        for character in text.unicodeScalars {
            switch character {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            case _ where character.value < 0x20:
                let hex = String(character.value, radix: 16)
                result += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: result.unicodeScalars.append(character)
            }
        }
        return result + "\""
    }
}
