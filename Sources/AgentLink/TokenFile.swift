#if canImport(Glibc)
    import Glibc
#endif

/// The session token both ends read from `--token-file`: the file's bytes without trailing whitespace.
public enum TokenFile {
    public static func read(_ path: String) throws(TokenFileError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw TokenFileError(path: path, problem: String(cString: strerror(errno))) }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while bytes.count <= 65536 {
            let count = Glibc.read(fd, &buffer, buffer.count)
            if count < 0 && errno == EINTR { continue }
            guard count >= 0 else { throw TokenFileError(path: path, problem: String(cString: strerror(errno))) }
            if count == 0 { break }
            bytes.append(contentsOf: buffer[..<count])
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
