import LinuxSystem

/// The session token both ends read from `--token-file`: the file's bytes without trailing whitespace.
public enum TokenFile {
    public static func read(_ path: String) throws(TokenFileError) -> [UInt8] {
        var bytes: [UInt8]
        do {
            bytes = try readFile(path, limit: 65536)
        } catch {
            throw TokenFileError(path: path, problem: "\(error.errno)")
        }
        while let last = bytes.last, [9, 10, 13, 32].contains(last) { bytes.removeLast() }
        guard !bytes.isEmpty else { throw TokenFileError(path: path, problem: "it is empty") }
        guard bytes.count <= 65536 else { throw TokenFileError(path: path, problem: "it is larger than 64 KiB") }
        return bytes
    }
}

public struct TokenFileError: Error, Sendable, CustomStringConvertible {
    public let path: String
    public let problem: String
    public var description: String { "cannot use the token file \(path): \(problem)" }
}
