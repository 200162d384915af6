/// The messages of a netfilter log (NFLOG) socket: the kernel sends a copy of each packet a `log group`
/// rule matched, as netlink messages with attributes (linux/netfilter/nfnetlink_log.h).
public enum NetlinkLog {
    /// nlmsg_type of a logged packet: NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_PACKET.
    static let packetMessage: UInt16 = 0x0400
    static let errorMessage: UInt16 = 2
    /// NFULA_PAYLOAD: the packet, from its IP header.
    static let payloadAttribute: UInt16 = 9

    /// The IP packets in one datagram read from the socket; anything malformed is skipped.
    public static func packets(in datagram: ArraySlice<UInt8>) -> [ArraySlice<UInt8>] {
        var packets: [ArraySlice<UInt8>] = []
        var offset = datagram.startIndex
        // struct nlmsghdr: len u32, type u16, flags u16, seq u32, pid u32 (host order: little-endian here).
        while datagram.endIndex - offset >= 16 {
            let length = Int(littleEndian32(datagram, offset))
            guard length >= 16, offset + length <= datagram.endIndex else { break }
            let type = littleEndian16(datagram, offset + 4)
            // After the header: struct nfgenmsg (4 bytes), then attributes.
            if type == packetMessage, length >= 20,
                let payload = attribute(payloadAttribute, in: datagram[(offset + 20)..<(offset + length)])
            {
                packets.append(payload)
            }
            offset += (length + 3) & ~3
        }
        return packets
    }

    /// The value of attribute `wanted` (struct nlattr: len u16, type u16, value, padded to 4).
    static func attribute(_ wanted: UInt16, in attributes: ArraySlice<UInt8>) -> ArraySlice<UInt8>? {
        var offset = attributes.startIndex
        while attributes.endIndex - offset >= 4 {
            let length = Int(littleEndian16(attributes, offset))
            let type = littleEndian16(attributes, offset + 2) & 0x3fff  // without NLA_F_NESTED / BYTEORDER
            guard length >= 4, offset + length <= attributes.endIndex else { return nil }
            if type == wanted { return attributes[(offset + 4)..<(offset + length)] }
            offset += (length + 3) & ~3
        }
        return nil
    }

    static func littleEndian16<C: Collection<UInt8>>(_ bytes: C, _ at: C.Index) -> UInt16 where C.Index == Int {
        UInt16(bytes[at]) | UInt16(bytes[at + 1]) << 8
    }

    static func littleEndian32(_ bytes: ArraySlice<UInt8>, _ at: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[at + $1]) << (8 * $1) }
    }
}
