import SyscallDecoding

/// A program's memory as plain values: mapped pages with their bytes, everything else unmapped.
/// It answers like the kernel does: reads stop where an unmapped page begins.
struct MemoryImage: ProgramMemory {
    static let pageSize: UInt64 = 4096
    var pages: [UInt64: [UInt8]] = [:]

    /// Maps the pages under `address..<address+bytes.count` and writes `bytes` there.
    mutating func write(_ bytes: [UInt8], at address: UInt64) {
        for (offset, byte) in bytes.enumerated() {
            let at = address + UInt64(offset)
            let page = at / Self.pageSize
            pages[page, default: [UInt8](repeating: 0, count: Int(Self.pageSize))][Int(at % Self.pageSize)] = byte
        }
    }

    mutating func write(_ string: String, at address: UInt64) {
        write(Array(string.utf8) + [0], at: address)
    }

    func readable(at address: UInt64, count: Int) throws(MemoryFault) -> [UInt8] {
        var result: [UInt8] = []
        var at = address
        while result.count < count, let page = pages[at / Self.pageSize] {
            result.append(page[Int(at % Self.pageSize)])
            at += 1
        }
        if result.isEmpty && count > 0 { throw .unreadable(errno: 14) }
        return result
    }
}

extension Array where Element == UInt8 {
    /// Little-endian bytes of `value`, as they sit in a program's memory.
    static func littleEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        (0..<MemoryLayout<T>.size).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
    }
}
