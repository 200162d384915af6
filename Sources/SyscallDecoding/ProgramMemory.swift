/// Why a value could not be read from the program's memory.
public enum MemoryFault: Error, Sendable, Equatable {
    /// The read failed with this errno (EFAULT for an unmapped address, EPERM when access is denied, ...).
    case unreadable(errno: Int32)
    /// A string ran into unmapped memory before its NUL.
    case unterminated
    /// A string had no NUL within the limit (for paths, PATH_MAX: the kernel answers ENAMETOOLONG).
    case tooLong
}

/// Read access to a traced program's memory at the time of one notification.
public protocol ProgramMemory {
    /// Up to `count` bytes at `address`, stopping early where an unreadable page begins.
    /// Throws only when not even the first byte can be read.
    func readable(at address: UInt64, count: Int) throws(MemoryFault) -> [UInt8]
}

extension ProgramMemory {
    /// Exactly `count` bytes at `address`.
    @inlinable
    public func bytes(at address: UInt64, count: Int) throws(MemoryFault) -> [UInt8] {
        let bytes = try readable(at: address, count: count)
        guard bytes.count == count else { throw .unreadable(errno: 14) }  // EFAULT
        return bytes
    }

    /// A NUL-terminated string at `address`, without its NUL, at most `limit` bytes counting the NUL.
    /// Reads a short first piece (most paths fit), then whole pieces, so that a string ending just before an
    /// unmapped page is read correctly and one running into it is reported as such.
    @inlinable
    public func string(at address: UInt64, limit: Int) throws(MemoryFault) -> [UInt8] {
        var collected: [UInt8] = []
        var cursor = address
        var pieceSize = 256
        while collected.count < limit {
            let wanted = min(pieceSize, limit - collected.count)
            var piece: [UInt8]
            do {
                piece = try readable(at: cursor, count: wanted)
            } catch {
                throw collected.isEmpty ? error : .unterminated
            }
            if let nul = piece.firstIndex(of: 0) {
                piece.removeSubrange(nul...)
                if collected.isEmpty { return piece }  // the common case: one read, one allocation
                return collected + piece
            }
            collected += piece
            if piece.count < wanted { throw .unterminated }
            cursor &+= UInt64(piece.count)
            pieceSize = 4096
        }
        throw .tooLong
    }
}
