import Incoming
import LinuxSystem

#if canImport(Glibc)
    import Glibc
#endif

/// nft, run in the agent's network namespace (the pod's). Needs CAP_NET_ADMIN.
struct Netfilter: Sendable {
    let path: String

    /// nft from Debian's nftables package; nil when the agent's image lacks it.
    static func locate() -> Netfilter? {
        ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"].first { (path: String) in access(path, X_OK) == 0 }
            .map(Netfilter.init)
    }

    /// Runs nft with `script` on its standard input; its output, or its error message.
    @discardableResult
    func run(_ arguments: [String], script: String? = nil) throws(IncomingError) -> String {
        let completion: HelperProcess.Completion
        do {
            completion = try HelperProcess.run(
                path: path, arguments: ["nft"] + arguments, environment: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
                input: script.map { Array($0.utf8) }, timeout: .seconds(10))
        } catch {
            throw IncomingError("could not run \(path): \(error)")
        }
        guard completion.status == 0 else {
            let message = String(decoding: completion.errors, as: UTF8.self).split(separator: "\n").first ?? ""
            throw IncomingError("nft \(arguments.joined(separator: " ")) failed: \(message)")
        }
        return String(decoding: completion.output, as: UTF8.self)
    }

    /// Brings the session's table from `previous` to `plan`.
    func apply(_ plan: NetfilterPlan, after previous: NetfilterPlan) throws(IncomingError) {
        try run(["-f", "-"], script: plan.script(after: previous))
    }

    /// Every session table in the namespace, with its chains.
    func sessionTables() throws(IncomingError) -> [String: [String]] {
        NetfilterPlan.sessionTables(inListing: try run(["list", "chains"]))
    }

    /// Removes the tables of agents that are gone (killed before they could remove their own), as
    /// `isAlive` tells by an agent's name; returns them.
    func removeStaleTables(isAlive: (String) -> Bool) -> [String] {
        guard let tables = try? sessionTables() else { return [] }
        let stale = tables.keys.filter { table in NetfilterPlan.owner(of: table).map { !isAlive($0) } ?? false }
        for table in stale { removeTable(table) }
        return stale.sorted()
    }

    /// Removes `table` if it is there.
    func removeTable(_ table: String) {
        _ = try? run(["-f", "-"], script: NetfilterPlan.deletion(of: table))
    }
}

/// Why incoming traffic cannot be set up; the message goes to the client as the `listen` failure.
struct IncomingError: Error, Sendable, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
