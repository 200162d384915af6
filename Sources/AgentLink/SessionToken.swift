import Crypto

/// What an agent accepts as a session's token: the token itself (`--token-file`), or only its SHA-256
/// (`--token-sha256`), so that a pod spec, which others may read, never holds the token.
public enum SessionToken: Sendable, Equatable {
    case exact([UInt8])
    case sha256([UInt8])

    /// A fresh token: 256 random bits from the kernel's generator, as 64 hex digits.
    public static func random() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return hex((0..<32).map { _ in UInt8.random(in: .min ... .max, using: &generator) })
    }

    /// SHA-256 of `token`, as 64 lowercase hex digits.
    public static func digest(_ token: [UInt8]) -> String {
        String(decoding: hex(Array(SHA256.hash(data: token))), as: UTF8.self)
    }

    /// Parses `--token-sha256`'s 64 hex digits.
    public init?(sha256 text: String) {
        let digits = Array(text.lowercased().utf8)
        guard digits.count == 64 else { return nil }
        var bytes: [UInt8] = []
        for index in stride(from: 0, to: 64, by: 2) {
            guard let byte = UInt8(String(decoding: digits[index...index + 1], as: UTF8.self), radix: 16) else {
                return nil
            }
            bytes.append(byte)
        }
        self = .sha256(bytes)
    }

    /// Whether `presented` is the token, compared in constant time.
    public func accepts(_ presented: [UInt8]) -> Bool {
        switch self {
        case .exact(let token): Self.constantTimeEquals(presented, token)
        case .sha256(let digest): Self.constantTimeEquals(Array(SHA256.hash(data: presented)), digest)
        }
    }

    static func constantTimeEquals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var difference = UInt8(a.count == b.count ? 0 : 1)
        for index in 0..<max(a.count, b.count) {
            difference |= (index < a.count ? a[index] : 0) ^ (index < b.count ? b[index] : 0)
        }
        return difference == 0
    }

    static func hex(_ bytes: [UInt8]) -> [UInt8] {
        let digits = Array("0123456789abcdef".utf8)
        return bytes.flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 15)]] }
    }
}
