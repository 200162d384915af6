/// One end of a TCP connection: an IPv4 (4 bytes) or IPv6 (16 bytes) address and a port.
public struct Endpoint: Hashable, Sendable, CustomStringConvertible {
    public var address: [UInt8]
    public var port: UInt16

    public init(address: [UInt8], port: UInt16) {
        self.address = address
        self.port = port
    }

    /// As a sockaddr_in or sockaddr_in6 (what the link carries and accept reports).
    public var socketAddress: [UInt8] {
        let port = [UInt8(self.port >> 8), UInt8(self.port & 0xff)]
        if address.count == 4 { return [2, 0] + port + address + [UInt8](repeating: 0, count: 8) }
        return [10, 0] + port + [0, 0, 0, 0] + address + [0, 0, 0, 0]
    }

    public var description: String {
        if address.count == 4 { return address.map(String.init).joined(separator: ".") + ":\(port)" }
        let groups = stride(from: 0, to: 16, by: 2).map { String(UInt16(address[$0]) << 8 | UInt16(address[$0 + 1]), radix: 16) }
        return "[\(groups.joined(separator: ":"))]:\(port)"
    }
}

/// A TCP segment as the pod's network stack saw it, taken from a copied IP packet.
public struct TCPSegment: Equatable, Sendable {
    public static let fin: UInt8 = 0x01, syn: UInt8 = 0x02, rst: UInt8 = 0x04, ack: UInt8 = 0x10

    public var source: Endpoint
    public var destination: Endpoint
    public var sequence: UInt32
    public var flags: UInt8
    public var payload: [UInt8]

    public init(source: Endpoint, destination: Endpoint, sequence: UInt32, flags: UInt8, payload: [UInt8]) {
        self.source = source
        self.destination = destination
        self.sequence = sequence
        self.flags = flags
        self.payload = payload
    }

    public func has(_ flag: UInt8) -> Bool { flags & flag != 0 }

    /// Parses an IPv4 or IPv6 packet carrying TCP; nil for anything else (other protocols, fragments,
    /// IPv6 extension headers, truncated headers). A payload cut short by the copy is kept as far as it goes.
    public static func parse(ipPacket packet: ArraySlice<UInt8>) -> TCPSegment? {
        // Read in place (indices from 0, no copy but the payload's): this runs for every copied packet.
        packet.withUnsafeBufferPointer(parse)
    }

    static func parse(_ bytes: UnsafeBufferPointer<UInt8>) -> TCPSegment? {
        guard let first = bytes.first else { return nil }
        let source: [UInt8], destination: [UInt8], tcpStart: Int, end: Int
        switch first >> 4 {
        case 4:
            guard bytes.count >= 20, bytes[9] == 6 else { return nil }
            let headerLength = Int(first & 0x0f) * 4
            let total = Int(bytes[2]) << 8 | Int(bytes[3])
            let fragment = (Int(bytes[6]) << 8 | Int(bytes[7]))
            guard headerLength >= 20, fragment & 0x3fff == 0 else { return nil }  // neither MF nor an offset
            (source, destination) = (Array(bytes[12..<16]), Array(bytes[16..<20]))
            (tcpStart, end) = (headerLength, min(total, bytes.count))
        case 6:
            guard bytes.count >= 40, bytes[6] == 6 else { return nil }
            let payloadLength = Int(bytes[4]) << 8 | Int(bytes[5])
            (source, destination) = (Array(bytes[8..<24]), Array(bytes[24..<40]))
            (tcpStart, end) = (40, min(40 + payloadLength, bytes.count))
        default:
            return nil
        }
        guard end - tcpStart >= 20 else { return nil }
        let tcp = tcpStart
        let dataOffset = Int(bytes[tcp + 12] >> 4) * 4
        guard dataOffset >= 20, tcp + dataOffset <= end else { return nil }
        func port(_ at: Int) -> UInt16 { UInt16(bytes[at]) << 8 | UInt16(bytes[at + 1]) }
        let sequence = bytes[(tcp + 4)..<(tcp + 8)].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        return TCPSegment(
            source: Endpoint(address: source, port: port(tcp)),
            destination: Endpoint(address: destination, port: port(tcp + 2)),
            sequence: sequence, flags: bytes[tcp + 13], payload: Array(bytes[(tcp + dataOffset)..<end]))
    }
}
