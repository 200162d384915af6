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
            guard bytes.count >= 16 else { return nil }  // sizeof(struct sockaddr_in), as the kernel requires
            self = .inet(address: Array(bytes[4..<8]), port: port)
        case Self.familyInet6:
            guard bytes.count >= 24 else { return nil }  // SIN6_LEN_RFC2133, as the kernel requires
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

    /// The `struct sockaddr` bytes the kernel takes (sockaddr_in, sockaddr_in6, sockaddr_un).
    public var bytes: [UInt8] {
        switch self {
        case .inet(let address, let port):
            return [2, 0, UInt8(port >> 8), UInt8(port & 0xff)] + address + [UInt8](repeating: 0, count: 8)
        case .inet6(let address, let port, let scope):
            return [10, 0, UInt8(port >> 8), UInt8(port & 0xff), 0, 0, 0, 0] + address
                + withUnsafeBytes(of: scope.littleEndian) { Array($0) }
        case .unix(let path, let abstract):
            return [1, 0] + (abstract ? [0] + path : path + [0])
        case .other(let family):
            return [UInt8(family & 0xff), UInt8(family >> 8)]
        }
    }

    /// The family's number (AF_INET, AF_INET6, AF_UNIX, ...).
    public var family: Int32 {
        switch self {
        case .inet: Int32(Self.familyInet)
        case .inet6: Int32(Self.familyInet6)
        case .unix: Int32(Self.familyUnix)
        case .other(let family): Int32(family)
        }
    }

    /// The port of an IPv4 or IPv6 address; nil for the others.
    public var port: UInt16? {
        switch self {
        case .inet(_, let port), .inet6(_, let port, _): port
        case .unix, .other: nil
        }
    }

    /// The abstract unix address `name` (no file: it lives in the network namespace, and goes with its socket).
    public static func abstract(_ name: String) -> SocketAddress { .unix(path: Array(name.utf8), abstract: true) }

    /// The loopback address of `family` (127.0.0.1 or ::1) with `port`.
    public static func loopback(family: Int32, port: UInt16 = 0) -> SocketAddress {
        family == Int32(familyInet6)
            ? .inet6(address: [UInt8](repeating: 0, count: 15) + [1], port: port, scope: 0)
            : .inet(address: [127, 0, 0, 1], port: port)
    }

    /// The wildcard address of `family` (0.0.0.0 or ::) with `port`: every address, for a listener.
    public static func any(family: Int32, port: UInt16 = 0) -> SocketAddress {
        family == Int32(familyInet6)
            ? .inet6(address: [UInt8](repeating: 0, count: 16), port: port, scope: 0)
            : .inet(address: [0, 0, 0, 0], port: port)
    }

    /// Whether this is a loopback address: 127.0.0.0/8, ::1, or ::ffff:127.x.x.x.
    public var isLoopback: Bool {
        switch self {
        case .inet(let address, _):
            return address.first == 127
        case .inet6(let address, _, _):
            if address.prefix(15).allSatisfy({ $0 == 0 }) && address.last == 1 { return true }
            return address.prefix(10).allSatisfy({ $0 == 0 }) && address[10] == 0xff && address[11] == 0xff
                && address[12] == 127
        case .unix, .other:
            return false
        }
    }

    /// Where a connection to a socket listening here goes: a wildcard address (0.0.0.0, ::) becomes loopback.
    public var connectable: SocketAddress {
        switch self {
        case .inet(let address, let port) where address.allSatisfy({ $0 == 0 }):
            .loopback(family: family, port: port)
        case .inet6(let address, let port, _) where address.allSatisfy({ $0 == 0 }):
            .loopback(family: family, port: port)
        default:
            self
        }
    }

    /// This address as a socket of `family` reports it: IPv4 in an IPv6 socket as ::ffff:a.b.c.d; nil for
    /// IPv6 in an IPv4 socket, which cannot say it.
    public func seen(byFamily family: Int32) -> SocketAddress? {
        if family == self.family { return self }
        guard family == Int32(Self.familyInet6), case .inet(let address, let port) = self else { return nil }
        return .inet6(address: [UInt8](repeating: 0, count: 10) + [0xff, 0xff] + address, port: port, scope: 0)
    }

    /// An IPv4-mapped IPv6 address (::ffff:a.b.c.d, how a dual-stack socket shows an IPv4 peer) as IPv4;
    /// any other address as it is.
    public var unmapped: SocketAddress {
        guard case .inet6(let address, let port, _) = self, address.prefix(10).allSatisfy({ $0 == 0 }),
            address[10] == 0xff, address[11] == 0xff
        else { return self }
        return .inet(address: Array(address[12...]), port: port)
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
