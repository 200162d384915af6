import Testing

@testable import AgentProtocol

/// A small deterministic generator, so that a failure names a seed that reproduces it.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Whatever arrives, parsing returns a message, asks for more, or throws a violation: it never traps, never
/// claims more bytes than it was given, and what it parses re-encodes to a frame that parses the same.
func checkParse(_ bytes: [UInt8]) {
    switch try? Frame.parse(bytes) {
    case .message(let message, let consumed)?:
        #expect(consumed >= 9 && consumed <= bytes.count)
        let again = Frame.encode(message)
        #expect((try? Frame.parse(again)) == .message(message, consumed: again.count))
    case .incomplete?, nil:
        break
    }
    _ = try? DirectoryEntryCodec.decode(bytes)
}

@Test func randomFramesNeverTrap() {
    var random = SplitMix(state: 0x5359_534D)
    for _ in 0..<20_000 {
        let count = Int.random(in: 0..<64, using: &random)
        var bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &random) }
        // Most random lengths are huge; make half of them plausible so payload decoding is reached.
        if bytes.count >= 5, Bool.random(using: &random) {
            let length = UInt32(bytes.count - 4)
            bytes.replaceSubrange(0..<4, with: withUnsafeBytes(of: length.bigEndian, Array.init))
            bytes[4] = [0x01, 0x02, 0x03, 0x12, 0x13, 0x14, 0x16, 0x80, 0x82, 0x84, 0xA0].randomElement(using: &random)!
        }
        checkParse(bytes)
    }
}

@Test func mutatedFramesNeverTrap() {
    var random = SplitMix(state: 42)
    let frames = everyMessage.filter { if case .chunk = $0 { false } else { true } }.map { Frame.encode($0) }
    for _ in 0..<20_000 {
        var bytes = frames.randomElement(using: &random)!
        switch Int.random(in: 0..<4, using: &random) {
        case 0:  // flip bytes
            for _ in 0..<Int.random(in: 1...4, using: &random) {
                bytes[Int.random(in: 0..<bytes.count, using: &random)] ^= UInt8.random(in: 1...255, using: &random)
            }
        case 1:  // cut
            bytes.removeLast(Int.random(in: 0...bytes.count, using: &random))
        case 2:  // insert garbage
            let at = Int.random(in: 0...bytes.count, using: &random)
            bytes.insert(
                contentsOf: (0..<Int.random(in: 1...8, using: &random)).map { _ in
                    UInt8.random(in: 0...255, using: &random)
                }, at: at)
        default:  // change the type, keep the length right
            if bytes.count > 4 { bytes[4] = UInt8.random(in: 0...255, using: &random) }
        }
        checkParse(bytes)
    }
}
