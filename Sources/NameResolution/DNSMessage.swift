/// What a DNS query asks (RFC 1035 §4.1.2): a name, in lower case without the final dot, a type and a class.
public struct DNSQuestion: Hashable, Sendable, CustomStringConvertible {
    public var name: String
    public var type: UInt16
    public var `class`: UInt16

    public init(name: String, type: UInt16, class: UInt16 = DNSMessage.internetClass) {
        self.name = DNSMessage.canonical(name)
        self.type = type
        self.class = `class`
    }

    public var description: String { "\(name) \(DNSMessage.typeName(type))" }
}

/// A program's query, as sysmirror answers it: its id, its question, where the question's name lies in its
/// bytes (answers repeat it as the program wrote it, in the same letter case), and the largest answer it takes
/// over UDP.
public struct DNSQuery: Sendable, Equatable {
    public var id: UInt16
    public var question: DNSQuestion
    /// The question's name exactly as sent, in wire form.
    public var nameBytes: [UInt8]
    /// 512 without EDNS (RFC 1035 §4.2.1), else the OPT record's payload size (RFC 6891 §6.2.3).
    public var udpLimit: Int
}

/// The few parts of DNS messages that sysmirror reads and writes: a program's query, the agent's queries, and
/// the answers' lifetimes. Pure: bytes in, bytes out.
public enum DNSMessage {
    public static let internetClass: UInt16 = 1
    public static let typeA: UInt16 = 1, typeAAAA: UInt16 = 28, typeSOA: UInt16 = 6, typeOPT: UInt16 = 41
    static let headerLength = 12
    /// The payload size the agent offers (RFC 9715's advice for avoiding fragmentation).
    public static let ednsPayload: UInt16 = 1232

    public enum ResponseCode: UInt8, Sendable {
        case noError = 0, formatError = 1, serverFailure = 2, nameError = 3, notImplemented = 4, refused = 5
    }

    /// `name` in lower case, without a final dot.
    public static func canonical(_ name: String) -> String {
        let lower = name.lowercased()
        return lower.hasSuffix(".") ? String(lower.dropLast()) : lower
    }

    static func typeName(_ type: UInt16) -> String {
        switch type {
        case typeA: "A"
        case typeAAAA: "AAAA"
        case typeSOA: "SOA"
        case 5: "CNAME"
        case 12: "PTR"
        case 15: "MX"
        case 16: "TXT"
        case 33: "SRV"
        default: "TYPE\(type)"
        }
    }

    // MARK: Queries

    /// A program's standard query with one question; nil for anything else (an answer, several questions,
    /// a name that does not parse), which the caller passes on unchanged or refuses.
    public static func query(_ bytes: [UInt8]) -> DNSQuery? {
        guard bytes.count >= headerLength, bytes[2] & 0xF8 == 0,  // QR 0, opcode QUERY
            uint16(bytes, 4) == 1
        else { return nil }
        var offset = headerLength
        guard let name = readName(bytes, &offset, allowPointers: false), offset + 4 <= bytes.count else { return nil }
        let nameBytes = Array(bytes[headerLength..<offset])
        let question = DNSQuestion(name: name, type: uint16(bytes, offset), class: uint16(bytes, offset + 2))
        offset += 4
        var limit = 512
        // The OPT record, if any, is among the additional records (answer and authority counts are 0).
        let additional = Int(uint16(bytes, 10))
        for _ in 0..<additional {
            guard let record = readRecord(bytes, &offset) else { break }
            if record.type == typeOPT { limit = max(512, Int(record.class)) }
        }
        return DNSQuery(id: uint16(bytes, 0), question: question, nameBytes: nameBytes, udpLimit: limit)
    }

    /// A recursive query for `question` with an OPT record, as the agent sends it to the pod's name server.
    public static func makeQuery(id: UInt16, _ question: DNSQuestion) -> [UInt8] {
        var bytes: [UInt8] = []
        append16(&bytes, id)
        bytes += [0x01, 0x00]  // RD
        append16(&bytes, 1)
        bytes += [0, 0, 0, 0]
        append16(&bytes, 1)  // the OPT record
        for label in question.name.split(separator: ".") {
            let utf8 = Array(label.utf8.prefix(63))
            bytes.append(UInt8(utf8.count))
            bytes += utf8
        }
        bytes.append(0)
        append16(&bytes, question.type)
        append16(&bytes, question.class)
        bytes.append(0)  // the OPT record's root name
        append16(&bytes, typeOPT)
        append16(&bytes, ednsPayload)
        bytes += [0, 0, 0, 0, 0, 0]  // extended rcode, version, flags; no options
        return bytes
    }

    // MARK: Answers

    /// The answer's id, whether it was truncated (TC), and its response code.
    public static func header(_ bytes: [UInt8]) -> (id: UInt16, truncated: Bool, code: UInt8)? {
        guard bytes.count >= headerLength, bytes[2] & 0x80 != 0 else { return nil }
        return (uint16(bytes, 0), bytes[2] & 0x02 != 0, bytes[3] & 0x0F)
    }

    /// The question an answer answers; nil when it has none or does not parse.
    public static func question(ofAnswer bytes: [UInt8]) -> DNSQuestion? {
        guard header(bytes) != nil, uint16(bytes, 4) == 1 else { return nil }
        var offset = headerLength
        guard let name = readName(bytes, &offset, allowPointers: true), offset + 4 <= bytes.count else { return nil }
        return DNSQuestion(name: name, type: uint16(bytes, offset), class: uint16(bytes, offset + 2))
    }

    /// How long an answer may be kept, in seconds: a positive answer for the least TTL among its answer
    /// records; a negative one (NXDOMAIN, or NOERROR without answers) for its SOA's negative TTL, the lesser
    /// of the SOA record's TTL and its MINIMUM field (RFC 2308 §5). Nil: not to be kept (a failure, a
    /// truncated answer, a negative answer without SOA, an answer that does not parse).
    public static func lifetime(_ bytes: [UInt8]) -> UInt32? {
        guard let (_, truncated, code) = header(bytes), !truncated,
            code == ResponseCode.noError.rawValue || code == ResponseCode.nameError.rawValue,
            let records = records(bytes)
        else { return nil }
        let answers = records.filter { $0.section == .answer }
        if code == ResponseCode.noError.rawValue && !answers.isEmpty {
            return answers.map(\.ttl).min()
        }
        guard let soa = records.first(where: { $0.section == .authority && $0.type == typeSOA }),
            soa.dataLength >= 20
        else { return nil }
        let minimum = uint32(bytes, soa.dataOffset + soa.dataLength - 4)
        return min(soa.ttl, minimum)
    }

    /// `stored` (an answer kept `age` seconds) made the answer to `query`: the query's id, its question's name
    /// as the program wrote it, every TTL lowered by the age; over UDP (`udp`), an answer larger than the
    /// query takes is cut to its header and question with TC set, so the resolver asks again over TCP.
    public static func answer(_ stored: [UInt8], to query: DNSQuery, age: UInt32, udp: Bool) -> [UInt8] {
        var bytes = stored
        bytes[0] = UInt8(query.id >> 8)
        bytes[1] = UInt8(query.id & 0xFF)
        let nameEnd = headerLength + query.nameBytes.count
        var storedNameEnd = headerLength
        // The same name in another letter case has the same length; anything else stays as the server wrote it.
        if uint16(bytes, 4) == 1, readName(bytes, &storedNameEnd, allowPointers: false) != nil, storedNameEnd == nameEnd
        {
            bytes.replaceSubrange(headerLength..<nameEnd, with: query.nameBytes)
        }
        if age > 0, let records = records(bytes) {
            for record in records where record.type != typeOPT {
                let lowered = record.ttl > age ? record.ttl - age : 0
                put32(&bytes, record.ttlOffset, lowered)
            }
        }
        if udp && bytes.count > query.udpLimit {
            var cut = Array(bytes[0..<min(bytes.count, nameEnd + 4)])
            cut[2] |= 0x02  // TC
            for index in 6..<12 { cut[index] = 0 }  // no answer, authority or additional records
            return cut
        }
        return bytes
    }

    /// An answer to `query` with no records and response code `code` (SERVFAIL when the pod's name server
    /// could not be asked).
    public static func failure(_ code: ResponseCode, to query: DNSQuery) -> [UInt8] {
        var bytes: [UInt8] = []
        append16(&bytes, query.id)
        bytes += [0x81, 0x80 | code.rawValue]  // QR, RD, RA
        append16(&bytes, 1)
        bytes += [0, 0, 0, 0, 0, 0]
        bytes += query.nameBytes
        append16(&bytes, query.question.type)
        append16(&bytes, query.question.class)
        return bytes
    }

    // MARK: Reading

    enum Section { case answer, authority, additional }

    struct Record {
        var section: Section
        var type: UInt16
        var `class`: UInt16
        var ttl: UInt32
        var ttlOffset: Int
        var dataOffset: Int
        var dataLength: Int
    }

    /// Every record after the question, in order; nil when the message does not parse.
    static func records(_ bytes: [UInt8]) -> [Record]? {
        var offset = headerLength
        for _ in 0..<uint16(bytes, 4) {
            guard readName(bytes, &offset, allowPointers: true) != nil, offset + 4 <= bytes.count else { return nil }
            offset += 4
        }
        var records: [Record] = []
        let sections: [(Section, UInt16)] = [
            (.answer, uint16(bytes, 6)), (.authority, uint16(bytes, 8)), (.additional, uint16(bytes, 10)),
        ]
        for (section, count) in sections {
            for _ in 0..<count {
                guard var record = readRecord(bytes, &offset) else { return nil }
                record.section = section
                records.append(record)
            }
        }
        return records
    }

    static func readRecord(_ bytes: [UInt8], _ offset: inout Int) -> Record? {
        guard readName(bytes, &offset, allowPointers: true) != nil, offset + 10 <= bytes.count else { return nil }
        let length = Int(uint16(bytes, offset + 8))
        guard offset + 10 + length <= bytes.count else { return nil }
        let record = Record(
            section: .additional, type: uint16(bytes, offset), class: uint16(bytes, offset + 2),
            ttl: uint32(bytes, offset + 4), ttlOffset: offset + 4, dataOffset: offset + 10, dataLength: length)
        offset += 10 + length
        return record
    }

    /// Reads a name at `offset` and moves past it; follows compression pointers (RFC 1035 §4.1.4) where
    /// allowed, each strictly backwards, so a loop cannot hang the reader.
    static func readName(_ bytes: [UInt8], _ offset: inout Int, allowPointers: Bool) -> String? {
        var labels: [String] = []
        var position = offset
        var end: Int?
        var total = 0
        while true {
            guard position < bytes.count else { return nil }
            let length = Int(bytes[position])
            if length & 0xC0 == 0xC0 {
                guard allowPointers, position + 1 < bytes.count else { return nil }
                let target = (length & 0x3F) << 8 | Int(bytes[position + 1])
                guard target < position else { return nil }
                if end == nil { end = position + 2 }
                position = target
                continue
            }
            guard length & 0xC0 == 0 else { return nil }
            position += 1
            if length == 0 { break }
            guard position + length <= bytes.count else { return nil }
            total += length + 1
            guard total <= 255 else { return nil }
            labels.append(String(decoding: bytes[position..<position + length], as: UTF8.self))
            position += length
        }
        offset = end ?? position
        return labels.joined(separator: ".")
    }

    static func uint16(_ bytes: [UInt8], _ offset: Int) -> UInt16 {
        guard offset + 2 <= bytes.count else { return 0 }
        return UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
    }

    static func uint32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
        guard offset + 4 <= bytes.count else { return 0 }
        return bytes[offset..<offset + 4].reduce(0) { $0 << 8 | UInt32($1) }
    }

    static func append16(_ bytes: inout [UInt8], _ value: UInt16) {
        bytes += [UInt8(value >> 8), UInt8(value & 0xFF)]
    }

    static func put32(_ bytes: inout [UInt8], _ offset: Int, _ value: UInt32) {
        for index in 0..<4 { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (24 - 8 * index)) }
    }
}
