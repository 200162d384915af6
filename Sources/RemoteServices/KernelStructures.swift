import AgentProtocol
import UserNotification

/// The x86_64 layouts of the structures sysmirror fills in a program's memory for calls served remotely.
/// Pure: tested against Glibc's own layouts in SupervisorTests.
enum KernelStructures {
    static let statSize = 144
    static let statxSize = 256
    static let utsnameFieldSize = 65
    static let utsnameSize = 6 * utsnameFieldSize

    /// `struct stat` as newfstatat, stat and lstat fill it.
    static func stat(_ m: FileMetadata) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: statSize)
        put(m.device, at: 0, in: &bytes)
        put(m.inode, at: 8, in: &bytes)
        put(m.linkCount, at: 16, in: &bytes)
        put(m.mode, at: 24, in: &bytes)
        put(m.uid, at: 28, in: &bytes)
        put(m.gid, at: 32, in: &bytes)
        put(m.specialDevice, at: 40, in: &bytes)
        put(m.size, at: 48, in: &bytes)
        put(UInt64(m.blockSize), at: 56, in: &bytes)
        put(m.blocks, at: 64, in: &bytes)
        for (index, time) in [m.accessed, m.modified, m.changed].enumerated() {
            put(UInt64(bitPattern: time.seconds), at: 72 + 16 * index, in: &bytes)
            put(UInt64(time.nanoseconds), at: 80 + 16 * index, in: &bytes)
        }
        return bytes
    }

    /// STATX_BASIC_STATS: type, mode, nlink, uid, gid, atime, mtime, ctime, ino, size, blocks.
    static let statxBasicStats: UInt32 = 0x7ff

    /// `struct statx`, with the basic fields (no birth time: the pod's stat does not give one).
    static func statx(_ m: FileMetadata) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: statxSize)
        put(statxBasicStats, at: 0, in: &bytes)
        put(m.blockSize, at: 4, in: &bytes)
        put(UInt32(truncatingIfNeeded: m.linkCount), at: 16, in: &bytes)
        put(m.uid, at: 20, in: &bytes)
        put(m.gid, at: 24, in: &bytes)
        put(UInt16(truncatingIfNeeded: m.mode), at: 28, in: &bytes)
        put(m.inode, at: 32, in: &bytes)
        put(m.size, at: 40, in: &bytes)
        put(m.blocks, at: 48, in: &bytes)
        // atime, btime (left zero), ctime, mtime: struct statx_timestamp is 16 bytes.
        for (offset, time) in [(64, m.accessed), (96, m.changed), (112, m.modified)] {
            put(UInt64(bitPattern: time.seconds), at: offset, in: &bytes)
            put(time.nanoseconds, at: offset + 8, in: &bytes)
        }
        put(major(m.specialDevice), at: 128, in: &bytes)
        put(minor(m.specialDevice), at: 132, in: &bytes)
        put(major(m.device), at: 136, in: &bytes)
        put(minor(m.device), at: 140, in: &bytes)
        return bytes
    }

    /// glibc's dev_t encoding.
    static func major(_ device: UInt64) -> UInt32 {
        UInt32(truncatingIfNeeded: ((device >> 8) & 0xfff) | ((device >> 32) & ~0xfff))
    }

    static func minor(_ device: UInt64) -> UInt32 {
        UInt32(truncatingIfNeeded: (device & 0xff) | ((device >> 12) & ~0xff))
    }

    /// `struct utsname` with its nodename (the second field) replaced.
    static func utsname(_ local: [UInt8], nodename: [UInt8]) -> [UInt8] {
        var bytes = local + [UInt8](repeating: 0, count: max(0, utsnameSize - local.count))
        let name = nodename.prefix(utsnameFieldSize - 1)
        for index in 0..<utsnameFieldSize {
            bytes[utsnameFieldSize + index] = index < name.count ? name[name.startIndex + index] : 0
        }
        return Array(bytes.prefix(utsnameSize))
    }

    static func put<T: FixedWidthInteger>(_ value: T, at offset: Int, in bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { raw in
            for index in 0..<raw.count { bytes[offset + index] = raw[index] }
        }
    }
}
