import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

extension FileDescriptor {
    /// Reads to the end, or until more than `limit` bytes have come (then returns what it has, which is more
    /// than `limit`, so the caller can tell); retries EINTR.
    public func readToEnd(limit: Int = .max) throws(SystemCallError) -> [UInt8] {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while bytes.count <= limit {
            let count = try systemCall("read") { Glibc.read(rawValue, &buffer, buffer.count) }
            if count == 0 { break }
            bytes += buffer[..<count]
        }
        return bytes
    }
}

/// A whole (small) file: /proc entries, tokens, environment files.
public func readFile(_ path: String, limit: Int = .max) throws(SystemCallError) -> [UInt8] {
    let fd = FileDescriptor(rawValue: try systemCall("open(\(path))") { open(path, O_RDONLY | O_CLOEXEC) })
    defer { try? fd.close() }
    return try fd.readToEnd(limit: limit)
}

/// A directory entry's name, without its NUL.
public func entryName(_ entry: UnsafeMutablePointer<dirent>) -> [UInt8] {
    withUnsafeBytes(of: entry.pointee.d_name) { Array($0.prefix { $0 != 0 }) }
}
