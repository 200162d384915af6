/// The netfilter rules of one agent session, as nft scripts: a table of its own, `sysmirror_AGENT_N` (the
/// agent's name, unique in the pod, and the session's number), so that removing the table removes
/// everything the session added, and a table whose agent is gone can be told and removed by another agent.
///
/// - steal: in `prerouting` at the nat hook, connections to the port are redirected to the agent's port
///   for it, through a chain named `steal_PORT`. Only new
///   connections are NATed: connections open before the session keep their course. Packets with the agent's
///   mark (its own connections to the pod's application) are left alone, so pass-through never loops.
/// - mirror: in `prerouting` before conntrack, a copy of every packet to the port goes to the agent's
///   NFLOG group (except the agents' own, marked, which repeat a copied client's requests); the packet
///   itself goes on untouched.
///
/// Chains, once made, stay until the session ends, and changes flush and refill their rules: deleting the
/// rule that redirected a connection makes the kernel drop that connection's translation, and connections
/// stolen earlier (or handed on to the pod's application) would be reset. A port given back loses its jump,
/// and its chain is renamed `retired_PORT_TARGET`, free for another session to steal the port.
public struct NetfilterPlan: Equatable, Sendable {
    public static let tablePrefix = "sysmirror_"
    /// SO_MARK of the agent's own connections to the pod's application ("SYM" and 1).
    public static let passThroughMark: UInt32 = 0x5359_4d01
    /// The rule that leaves those connections alone.
    static let skipsPassedThrough = "meta mark 0x\(String(passThroughMark, radix: 16)) return"

    public let table: String
    /// Pod port → the agent's port that takes its stolen connections.
    public var steals: [UInt16: UInt16] = [:] {
        didSet { if !steals.isEmpty { hasStolen = true } }
    }
    /// How many claims of its port came before the session's first steal (`PortSharing`): its redirect is
    /// looked at after theirs, so that the first claim's agent gets the port's connections. nft runs the
    /// chains of one hook in priority order, and those of one priority newest first. Fixed once the chain is
    /// made.
    public var stealOrder = 0
    /// Ports copied to `logGroup`.
    public var mirrors: Set<UInt16> = [] {
        didSet { if !mirrors.isEmpty { hasMirrored = true } }
    }
    public var logGroup: UInt16 = 0
    /// Whether the base chains exist (from the session's first steal or mirror on).
    public private(set) var hasStolen = false
    public private(set) var hasMirrored = false

    public init(agent: String, session: Int) {
        table = "\(Self.tablePrefix)\(agent)_\(session)"
    }

    /// Nothing was ever set up.
    public var isEmpty: Bool { !hasStolen && !hasMirrored }

    /// Brings the table from `previous` (what the kernel has) to this plan in one transaction.
    public func script(after previous: NetfilterPlan) -> String {
        let name = "inet \(table)"
        var declared: [String] = []
        if hasStolen {
            declared.append(
                "  chain steal { type nat hook prerouting priority dstnat - \(10 - min(stealOrder, 9)); policy accept; }"
            )
            for port in steals.keys.sorted() { declared.append("  chain steal_\(port) { }") }
        }
        if hasMirrored {
            declared.append("  chain mirror { type filter hook prerouting priority raw; policy accept; }")
        }
        var lines = ["table \(name) {"] + declared + ["}"]
        if hasStolen {
            lines += [
                "flush chain \(name) steal",
                "add rule \(name) steal \(Self.skipsPassedThrough)",
            ]
            for port in steals.keys.sorted() {
                lines.append("add rule \(name) steal tcp dport \(port) jump steal_\(port)")
            }
            for (port, target) in steals.sorted(by: { $0.key < $1.key }) {
                lines += [
                    "flush chain \(name) steal_\(port)",
                    "add rule \(name) steal_\(port) meta l4proto tcp redirect to :\(target)",
                ]
            }
            for (port, target) in previous.steals.sorted(by: { $0.key < $1.key }) where steals[port] == nil {
                lines.append("rename chain \(name) steal_\(port) retired_\(port)_\(target)")
            }
        }
        if hasMirrored {
            lines.append("flush chain \(name) mirror")
            if !mirrors.isEmpty {
                let ports = mirrors.sorted().map(String.init).joined(separator: ", ")
                // An agent's own connections to the pod's application (requests a filter passed through)
                // come back through loopback: the client's connection was copied already.
                lines.append("add rule \(name) mirror \(Self.skipsPassedThrough)")
                // Pure ACKs carry nothing to copy and are a third of a short connection's packets: skipped
                // when the lengths show no payload (20- and 32-byte TCP headers: timestamps off and on).
                for (family, doff, length) in [("ip", 5, 40), ("ip", 8, 52), ("ip6", 5, 20), ("ip6", 8, 32)] {
                    lines.append(
                        "add rule \(name) mirror tcp dport { \(ports) } tcp flags & (fin | syn | rst) == 0 tcp doff \(doff) \(family) length \(length) return"
                    )
                }
                lines.append("add rule \(name) mirror tcp dport { \(ports) } log group \(logGroup) snaplen 65535")
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    public static func deletion(of table: String) -> String { "delete table inet \(table)\n" }

    /// The session tables in the output of `nft list chains`, with their chains' names.
    public static func sessionTables(inListing listing: String) -> [String: [String]] {
        var tables: [String: [String]] = [:]
        var current: String?
        for line in listing.split(separator: "\n") {
            let words = line.split { $0 == " " || $0 == "\t" }.map(String.init)
            if words.count >= 3, words[0] == "table" {
                current = words[2].hasPrefix(tablePrefix) ? words[2] : nil
                if let current { tables[current, default: []] = tables[current] ?? [] }
            } else if words.count >= 2, words[0] == "chain", let table = current {
                tables[table, default: []].append(words[1])
            }
        }
        return tables
    }

    /// The agent's name in a session table's name.
    public static func owner(of table: String) -> String? {
        guard table.hasPrefix(tablePrefix) else { return nil }
        return table.dropFirst(tablePrefix.count).split(separator: "_").first.map(String.init)
    }
}
