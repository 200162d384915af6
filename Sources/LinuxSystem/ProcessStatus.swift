/// What /proc/PID/status says of a process's size: its threads, and its virtual and resident memory. The
/// long-session tests and bench/ read it to show that sysmirror stays flat over thousands of connections.
public struct ProcessStatus: Sendable, Equatable {
    public let threads: Int
    /// VmSize, in kB.
    public let virtualKB: Int
    /// VmRSS, in kB.
    public let residentKB: Int

    /// Reads process `pid`'s status; throws when it is gone, or ENODATA when a field is missing.
    public init(pid: Int32) throws(SystemCallError) {
        let status = String(decoding: try readFile("/proc/\(pid)/status"), as: UTF8.self)
        func field(_ name: String) throws(SystemCallError) -> Int {
            let line = status.split(separator: "\n").first { $0.hasPrefix("\(name):") }
            let value = line?.dropFirst(name.count + 1).split(whereSeparator: { $0 == " " || $0 == "\t" }).first
            guard let number = value.flatMap({ Int($0) }) else {
                throw SystemCallError("read(/proc/\(pid)/status: \(name))", .noData)
            }
            return number
        }
        threads = try field("Threads")
        virtualKB = try field("VmSize")
        residentKB = try field("VmRSS")
    }
}
