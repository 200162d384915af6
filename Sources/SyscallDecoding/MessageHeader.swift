/// A program's `struct msghdr` (x86_64: 56 bytes) as sendmsg and recvmsg take it, and its `struct iovec`
/// array: where the data, the peer's address and the control messages are in the program's memory. Pure:
/// the caller reads and writes the memory.
public struct MessageHeader: Sendable, Equatable {
    /// One `struct iovec`: a piece of the program's buffer.
    public struct Piece: Sendable, Equatable {
        public let address: UInt64
        public let length: Int

        public init(address: UInt64, length: Int) {
            self.address = address
            self.length = length
        }
    }

    public static let size = 56
    /// Where recvmsg's results go, from the header's start: msg_namelen, msg_controllen, msg_flags.
    public static let nameLengthOffset: UInt64 = 8, controlLengthOffset: UInt64 = 40, flagsOffset: UInt64 = 48
    /// The kernel's limit on pieces (UIO_MAXIOV): more is EMSGSIZE.
    public static let maximumPieces = 1024

    public let name: UInt64
    public let nameLength: Int
    public let pieces: UInt64
    public let pieceCount: Int
    public let control: UInt64
    public let controlLength: Int

    /// Nil when `bytes` is shorter than a header.
    public init?(_ bytes: [UInt8]) {
        guard bytes.count >= Self.size else { return nil }
        name = bytes.loadLittleEndian(UInt64.self, at: 0)
        nameLength = Int(bytes.loadLittleEndian(UInt32.self, at: 8))
        pieces = bytes.loadLittleEndian(UInt64.self, at: 16)
        pieceCount = Int(truncatingIfNeeded: bytes.loadLittleEndian(UInt64.self, at: 24))
        control = bytes.loadLittleEndian(UInt64.self, at: 32)
        controlLength = Int(truncatingIfNeeded: bytes.loadLittleEndian(UInt64.self, at: 40))
    }

    /// The pieces in `bytes` (the iovec array, 16 bytes each), empty ones left out.
    public static func pieces(_ bytes: [UInt8]) -> [Piece] {
        stride(from: 0, to: bytes.count - 15, by: 16).compactMap { offset in
            let length = Int(truncatingIfNeeded: bytes.loadLittleEndian(UInt64.self, at: offset + 8))
            return length > 0 ? Piece(address: bytes.loadLittleEndian(UInt64.self, at: offset), length: length) : nil
        }
    }

    /// Where each part of `data` goes: the pieces filled in order, as readv would.
    public static func scatter(_ data: [UInt8], into pieces: [Piece]) -> [(address: UInt64, bytes: ArraySlice<UInt8>)] {
        var rest = data[...]
        var parts: [(address: UInt64, bytes: ArraySlice<UInt8>)] = []
        for piece in pieces where !rest.isEmpty {
            let part = rest.prefix(piece.length)
            parts.append((piece.address, part))
            rest = rest.dropFirst(part.count)
        }
        return parts
    }
}
