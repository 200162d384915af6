/// A socket address decoded from the bytes of a `struct sockaddr`.
public enum SocketAddress: Sendable, Equatable, CustomStringConvertible {
    /// IPv4: four address bytes and a port.
    case inet(address: [UInt8], port: UInt16)
    /// IPv6: sixteen address bytes, a port and a scope id.
    case inet6(address: [UInt8], port: UInt16, scope: UInt32)
    /// A filesystem path, or an abstract name (its leading NUL dropped), or unnamed.
    case unix(path: [UInt8], abstract: Bool)
    /// Another family (netlink, packet, ...): only its number is shown.
    case other(family: UInt16)

    static let familyInet: UInt16 = 2
    static let familyInet6: UInt16 = 10
    static let familyUnix: UInt16 = 1

    /// Decodes `bytes`; nil when they are too short for their family (the kernel answers EINVAL).
    public init?(_ bytes: [UInt8]) {
        guard bytes.count >= 2 else { return nil }
        let family = UInt16(bytes[0]) | UInt16(bytes[1]) << 8
        let port = UInt16(bytes.count >= 4 ? bytes[2] : 0) << 8 | UInt16(bytes.count >= 4 ? bytes[3] : 0)
        switch family {
        case Self.familyInet:
            guard bytes.count >= 8 else { return nil }
            self = .inet(address: Array(bytes[4..<8]), port: port)
        case Self.familyInet6:
            guard bytes.count >= 24 else { return nil }
            let scope = bytes.count >= 28 ? bytes.loadLittleEndian(UInt32.self, at: 24) : 0
            self = .inet6(address: Array(bytes[8..<24]), port: port, scope: scope)
        case Self.familyUnix:
            let name = bytes.dropFirst(2)
            if name.first == 0 {
                self = .unix(path: Array(name.dropFirst()), abstract: true)
            } else {
                self = .unix(path: Array(name.prefix { $0 != 0 }), abstract: false)
            }
        default:
            self = .other(family: family)
        }
    }

    /// `10.96.0.10:80`, `[fd00::1]:80`, `unix:/run/x.sock`, `unix:@name`.
    /// IPv4 or IPv6.
    public var isInternet: Bool {
        switch self {
        case .inet, .inet6: true
        case .unix, .other: false
        }
    }

    public var description: String {
        switch self {
        case .inet(let address, let port):
            return "\(Self.ipv4(address)):\(port)"
        case .inet6(let address, let port, let scope):
            let zone = scope == 0 ? "" : "%\(scope)"
            return "[\(Self.ipv6(address))\(zone)]:\(port)"
        case .unix(let path, let abstract):
            if path.isEmpty && !abstract { return "unix:(unnamed)" }
            return "unix:" + (abstract ? "@" : "") + String(decoding: path, as: UTF8.self)
        case .other(let family):
            return "{family=\(family)}"
        }
    }

    static func ipv4(_ bytes: [UInt8]) -> String {
        bytes.map(String.init).joined(separator: ".")
    }

    /// RFC 5952 text: lower case, the longest run of two or more zero groups as `::`,
    /// and IPv4-mapped addresses as `::ffff:a.b.c.d`.
    static func ipv6(_ bytes: [UInt8]) -> String {
        let groups = stride(from: 0, to: 16, by: 2).map { UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]) }
        if groups[0..<5].allSatisfy({ $0 == 0 }) && groups[5] == 0xffff {
            return "::ffff:" + ipv4(Array(bytes[12..<16]))
        }
        var bestStart = -1
        var bestLength = 1
        var index = 0
        while index < 8 {
            guard groups[index] == 0 else {
                index += 1
                continue
            }
            var end = index
            while end < 8 && groups[end] == 0 { end += 1 }
            if end - index > bestLength { (bestStart, bestLength) = (index, end - index) }
            index = end
        }
        let hex = groups.map { String($0, radix: 16) }
        guard bestStart >= 0 else { return hex.joined(separator: ":") }
        let head = hex[..<bestStart].joined(separator: ":")
        let tail = hex[(bestStart + bestLength)...].joined(separator: ":")
        return head + "::" + tail
    }
}
