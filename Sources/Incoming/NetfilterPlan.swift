/// The netfilter rules of one agent session, as an nft script: a table of its own, `sysmirror_PID_N`
/// (the agent's pid and the session's number), so that removing the table removes everything the session
/// added, and a table whose agent is gone can be told and removed by the next agent.
///
/// - steal: in `prerouting` at the nat hook, connections to the port are redirected to the agent's port
///   for it, through a chain named `steal_PORT` (how another session tells the port is taken). Only new
///   connections are NATed: connections open before the session keep their course. Packets with the agent's
///   mark (its own connections to the pod's application) are left alone, so pass-through never loops.
/// - mirror: in `prerouting` before conntrack, a copy of every packet to the port goes to the agent's
///   NFLOG group; the packet itself goes on untouched.
public struct NetfilterPlan: Equatable, Sendable {
    public static let tablePrefix = "sysmirror_"
    /// SO_MARK of the agent's own connections to the pod's application ("SYM" and 1).
    public static let passThroughMark: UInt32 = 0x5359_4d01

    public let table: String
    /// Pod port → the agent's port that takes its stolen connections.
    public var steals: [UInt16: UInt16] = [:]
    /// Ports copied to `logGroup`.
    public var mirrors: Set<UInt16> = []
    public var logGroup: UInt16 = 0

    public init(agentPID: Int32, session: Int) {
        table = "\(Self.tablePrefix)\(agentPID)_\(session)"
    }

    public var isEmpty: Bool { steals.isEmpty && mirrors.isEmpty }

    /// Replaces the table's content in one transaction (the table is created first so the delete cannot
    /// fail); an empty plan removes the table.
    public var script: String {
        var lines = ["table inet \(table)", "delete table inet \(table)"]
        guard !isEmpty else { return lines.joined(separator: "\n") + "\n" }
        lines.append("table inet \(table) {")
        if !steals.isEmpty {
            lines += [
                "  chain steal {", "    type nat hook prerouting priority dstnat - 10; policy accept;",
                "    meta mark 0x\(String(Self.passThroughMark, radix: 16)) return",
            ]
            for port in steals.keys.sorted() { lines.append("    tcp dport \(port) jump steal_\(port)") }
            lines.append("  }")
            for (port, target) in steals.sorted(by: { $0.key < $1.key }) {
                lines += ["  chain steal_\(port) {", "    meta l4proto tcp redirect to :\(target)", "  }"]
            }
        }
        if !mirrors.isEmpty {
            let ports = mirrors.sorted().map(String.init).joined(separator: ", ")
            lines += [
                "  chain mirror {", "    type filter hook prerouting priority raw; policy accept;",
                "    tcp dport { \(ports) } log group \(logGroup) snaplen 65535", "  }",
            ]
        }
        lines.append("}")
        return lines.joined(separator: "\n") + "\n"
    }

    public static func deletion(of table: String) -> String { "delete table inet \(table)\n" }

    /// The session tables in the output of `nft list chains`, with their chains' names.
    public static func sessionTables(inListing listing: String) -> [String: [String]] {
        var tables: [String: [String]] = [:]
        var current: String?
        for line in listing.split(separator: "\n") {
            let words = line.split(separator: " ", omittingEmptySubsequences: true).map {
                $0.trimmingCharacters(in: "\t")
            }
            if words.count >= 3, words[0] == "table" {
                current = words[2].hasPrefix(tablePrefix) ? words[2] : nil
                if let current { tables[current, default: []] = tables[current] ?? [] }
            } else if words.count >= 2, words[0] == "chain", let table = current {
                tables[table, default: []].append(words[1])
            }
        }
        return tables
    }

    /// The pid in a session table's name.
    public static func owner(of table: String) -> Int32? {
        guard table.hasPrefix(tablePrefix) else { return nil }
        return table.dropFirst(tablePrefix.count).split(separator: "_").first.flatMap { Int32($0) }
    }

    /// The pod port a chain named `steal_PORT` takes.
    public static func stolenPort(chain: String) -> UInt16? {
        chain.hasPrefix("steal_") ? UInt16(chain.dropFirst(6)) : nil
    }
}
