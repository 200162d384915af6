import AgentProtocol
import Testing

@Suite("Stream framing")
struct StreamFramingTests {
    /// A stream of pieces, then its end.
    static func stream(_ pieces: [[UInt8]]) -> [UInt8] {
        pieces.flatMap { StreamFraming.dataHeader(count: $0.count) + $0 } + StreamFraming.end
    }

    @Test("Data comes out whole and in order, however the bytes are cut; the end comes last", arguments: [1, 2, 3, 5, 7, 64])
    func anyCut(size: Int) throws {
        let pieces: [[UInt8]] = [Array(0..<200), [7], Array(repeating: 9, count: 70)]
        let bytes = Self.stream(pieces)
        var reader = StreamFraming.Reader()
        var data: [UInt8] = []
        var offset = 0
        while offset < bytes.count {
            var chunk = Array(bytes[offset..<min(offset + size, bytes.count)])
            let count = try reader.extract(&chunk, count: chunk.count)
            data += chunk[..<count]
            offset += size
            #expect(reader.ended == (offset >= bytes.count))
        }
        #expect(data == pieces.flatMap { $0 })
    }

    @Test("Garbage is refused: an unknown kind, an empty data piece, an end with a length, bytes after the end")
    func malformed() {
        for bad: [UInt8] in [[9, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 3], StreamFraming.end + [0]] {
            var reader = StreamFraming.Reader()
            var buffer = bad
            #expect(throws: StreamFraming.Reader.Failure.malformed) { try reader.extract(&buffer, count: buffer.count) }
        }
    }

    @Test("A large piece's header holds its length")
    func header() {
        #expect(StreamFraming.dataHeader(count: 0x0102_0304) == [0, 1, 2, 3, 4])
        var buffer = [UInt8](repeating: 0xff, count: 8)
        StreamFraming.writeDataHeader(count: 65536, into: &buffer, at: 3)
        #expect(buffer == [0xff, 0xff, 0xff, 0, 0, 1, 0, 0])
    }
}
