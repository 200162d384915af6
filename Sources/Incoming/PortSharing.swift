import AgentProtocol

/// Who may steal a pod port beside whom, and which of the sessions sharing it gets a request: sessions that
/// steal by filter share a port, the earliest claim first; a steal of every request takes a port alone.
public enum PortSharing {
    /// Claims in the order they were made: the order in which they are offered a request.
    public static func ordered(_ claims: [PortClaim]) -> [PortClaim] {
        claims.sorted {
            ($0.registeredAt, $0.owner.agent, $0.owner.session) < ($1.registeredAt, $1.owner.agent, $1.owner.session)
        }
    }

    /// Why `claim` cannot take its port beside `others` (the port's other claims, in any order); nil when it
    /// may. The message names the session in the way and says what to do.
    public static func refusal(of claim: PortClaim, beside others: [PortClaim]) -> String? {
        let port = claim.port
        let others = ordered(others.filter { $0.owner != claim.owner && $0.port == port })
        if let whole = others.first(where: { !$0.isFiltered }) {
            let what = claim.isFiltered ? "; a filtered steal shares a port only with other filtered steals" : ""
            return
                "port \(port) of the pod is already stolen by another sysmirror session, \(whole.developer)'s (netfilter table \(whole.table)), which takes every request\(what). End that session, or mirror the port instead (--incoming mirror)"
        }
        guard !claim.isFiltered, let first = others.first else { return nil }
        let count = others.count == 1 ? "" : " and \(others.count - 1) more"
        return
            "port \(port) of the pod is shared by sessions that steal only the requests their filter matches: \(first.developer)'s (\(describeFilter(first)))\(count). Steal with a filter of your own to share it (--steal-header, --steal-path), or mirror the port instead (--incoming mirror)"
    }

    /// Where a request goes among `claims` (in the order made): the first whose filter it matches, or nil
    /// (the pod's application); and the other claims it matches, which missed it.
    public static func route<Claim>(_ claims: [Claim], matches: (Claim) -> Bool) -> (winner: Claim?, missed: [Claim]) {
        let matching = claims.filter(matches)
        return (matching.first, Array(matching.dropFirst()))
    }

    /// `--steal-header '^X-Dev: alice$'`, as a log names a claim's filter.
    public static func describeFilter(_ claim: PortClaim) -> String {
        var parts: [String] = []
        if !claim.headerPattern.isEmpty { parts.append("--steal-header '\(claim.headerPattern)'") }
        if !claim.pathPattern.isEmpty { parts.append("--steal-path '\(claim.pathPattern)'") }
        return parts.isEmpty ? "every request" : parts.joined(separator: " ")
    }

    /// The names of the listening abstract unix sockets in `/proc/net/unix` (without the `@`) that begin with
    /// `prefix`: how an agent finds the other agents of its pod.
    public static func listeningAbstractNames(inProcNetUnix listing: String, prefix: String) -> [String] {
        // Num RefCount Protocol Flags Type St Inode Path; Flags has __SO_ACCEPTCON (0x10000) when listening.
        listing.split(separator: "\n").dropFirst().compactMap { line in
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 8, let flags = UInt32(fields[3], radix: 16), flags & 0x10000 != 0,
                fields[7].hasPrefix("@" + prefix)
            else { return nil }
            return String(fields[7].dropFirst())
        }
    }
}
