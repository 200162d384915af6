import SyscallDecoding
import Testing

@Suite("struct msghdr and its iovecs, as sendmsg and recvmsg take them")
struct MessageHeaderTests {
    func littleEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        withUnsafeBytes(of: value.littleEndian) { Array($0) }
    }

    @Test("The header's fields at x86_64's offsets; a short one is refused")
    func header() throws {
        let bytes =
            littleEndian(UInt64(0x1000)) + littleEndian(UInt32(16)) + [0, 0, 0, 0] + littleEndian(UInt64(0x2000))
            + littleEndian(UInt64(3)) + littleEndian(UInt64(0x3000)) + littleEndian(UInt64(64))
            + littleEndian(Int32(0)) + [0, 0, 0, 0]
        let header = try #require(MessageHeader(bytes))
        #expect(header.name == 0x1000 && header.nameLength == 16)
        #expect(header.pieces == 0x2000 && header.pieceCount == 3)
        #expect(header.control == 0x3000 && header.controlLength == 64)
        #expect(MessageHeader(Array(bytes.prefix(55))) == nil)
    }

    @Test("Pieces in order, empty ones left out, a cut-off last one ignored")
    func pieces() {
        let table =
            littleEndian(UInt64(0x10)) + littleEndian(UInt64(4)) + littleEndian(UInt64(0x20)) + littleEndian(UInt64(0))
            + littleEndian(UInt64(0x30)) + littleEndian(UInt64(8)) + [1, 2, 3]
        #expect(
            MessageHeader.pieces(table) == [
                MessageHeader.Piece(address: 0x10, length: 4), MessageHeader.Piece(address: 0x30, length: 8),
            ])
        #expect(MessageHeader.pieces([]) == [])
    }

    @Test("A datagram scattered as readv fills: each piece in turn, what does not fit left out")
    func scatter() {
        let pieces = [MessageHeader.Piece(address: 0x10, length: 3), MessageHeader.Piece(address: 0x40, length: 4)]
        let parts = MessageHeader.scatter(Array(1...9), into: pieces)
        #expect(parts.map(\.address) == [0x10, 0x40])
        #expect(parts.map { Array($0.bytes) } == [[1, 2, 3], [4, 5, 6, 7]])
        let short = MessageHeader.scatter([1, 2], into: pieces)
        #expect(short.map(\.address) == [0x10] && short.map { Array($0.bytes) } == [[1, 2]])
        #expect(MessageHeader.scatter([], into: pieces).isEmpty)
    }
}
