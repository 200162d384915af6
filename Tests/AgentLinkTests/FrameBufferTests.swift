import AgentProtocol
import Foundation
import Testing

@testable import AgentLink

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Frames read from a socket")
struct FrameBufferTests {
    /// Small frames, the largest frame the protocol allows, then small ones again, as a link carries a
    /// lookup's answers around a file's chunks.
    static let messages: [Message] = {
        let small: [Message] = (0..<300).map { index in
            .chunk(id: UInt32(index), [UInt8](repeating: UInt8(index & 0xFF), count: index * 7))
        }
        let largest = Message.chunk(id: 1000, [UInt8](repeating: 0xAB, count: Frame.maximumLength - 64))
        let answers: [Message] = (0..<300).map { index in
            .response(id: UInt32(index), .text(Array(repeating: UInt8(ascii: "x"), count: index)))
        }
        return small + [largest] + answers
    }()

    /// Writes `bytes` into `fd` in pieces of `piece` bytes, from a thread of its own, then closes it.
    static func write(_ bytes: [UInt8], to fd: Int32, piece: Int) -> Thread {
        let thread = Thread {
            var offset = 0
            while offset < bytes.count {
                let sent = bytes[offset..<min(offset + piece, bytes.count)].withUnsafeBytes {
                    send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))  // a failed reader closes its end
                }
                guard sent > 0 else { break }
                offset += sent
            }
            close(fd)
        }
        thread.start()
        return thread
    }

    @Test("Every message comes out whole and in order, however the bytes are cut", arguments: [1 << 20, 65_536, 4097])
    func wholeAndInOrder(piece: Int) throws {
        var ends: [Int32] = [-1, -1]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) == 0)
        defer { close(ends[0]) }
        _ = Self.write(Self.messages.flatMap { Frame.encode($0) }, to: ends[1], piece: piece)
        var buffer = FrameBuffer()
        var received: [Message] = []
        reading: while true {
            while let message = try buffer.next() { received.append(message) }
            switch buffer.fill(from: ends[0]) {
            case .filled, .wouldBlock: continue
            case .closed: break reading
            case .failed(let errno):
                Issue.record("read failed: \(errno)")
                break reading
            }
        }
        #expect(received.count == Self.messages.count)
        let firstWrong = zip(received, Self.messages).enumerated().first { $0.element.0 != $0.element.1 }?.offset
        #expect(firstWrong == nil, "message \(firstWrong ?? 0) differs")
    }
}
