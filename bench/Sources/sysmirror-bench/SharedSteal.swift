// Shared filtered steal (docs/incoming.md, issue 17): what sharing a stolen port costs each request, measured
// on the incoming stand-in (IncomingPod) with one filtered session alone and with two sharing the port.
import Foundation

/// Round trips of requests to the pod's port, in one run: with one session stealing `X-Dev: alice` alone,
/// and with alice's session (through the stand-in's agent) and bob's (`X-Dev: bob`, through a second agent
/// in the pod's namespace) sharing the port. Marked requests go to their session's server, unmarked ones to
/// the pod's application; every answer is checked to come from where it should.
func sharedSteal() throws {
    try IncomingPod.with(tag: "s") { stand in try sharedSteal(on: stand) }
}

func sharedSteal(on stand: IncomingPod) throws {
    let secondAgent = "\(stand.socket).2"
    try startAgent(in: stand.pod, socket: secondAgent, servers: stand.servers)
    let count = options.rounds >= 5 ? 2000 : 500
    let modes = ["keepalive", "close"]
    var p50: [String: [Double]] = [:], p99: [String: [Double]] = [:]

    /// `count` requests with `header` (none: unmarked), in each mode, every one answered by `answerer`.
    func measure(_ name: String, header: String? = nil, answerer: String) throws {
        for mode in modes {
            let measured = stand.latency(count, mode, header: header)
            guard measured.answers == answerer else {
                throw BenchError(description: "\(name) (\(mode)): answered by \(measured.answers), not \(answerer)")
            }
            p50["\(name) \(mode)", default: []].append(measured.p50)
            p99["\(name) \(mode)", default: []].append(measured.p99)
        }
    }
    /// `name`'s session, stealing the pod's requests marked `X-Dev: NAME` for a server on local port `port`
    /// that answers NAME, through the agent on `agent` (by default the stand-in's), beside `others` sessions.
    func steal(as name: String, port: Int, agent: String? = nil, others: Int = 0) throws -> Process {
        let session = try stand.session(
            "steal", listen: "127.0.0.1:\(port)", answer: name,
            extra: ["--steal-header", "^X-Dev: \(name)$", "--port-map", "\(port):9090"], agent: agent, others: others)
        // A claim reaches the pod's other agents a moment after its table is up (PortShares).
        try waitUntil("\(name)'s marked requests answered by \(name)") {
            stand.latency(1, "close", header: "X-Dev: \(name)").answers == name
        }
        return session
    }

    let unfiltered = "no session: unmarked → pod"
    let aloneMarked = "alone: alice's → alice", aloneUnmarked = "alone: unmarked → pod"
    let sharedAlice = "shared: alice's → alice (1st claim, agent 1)"
    let sharedBob = "shared: bob's → bob (2nd claim, agent 2)"
    let sharedUnmarked = "shared: unmarked → pod"
    func alone() throws {
        let alice = try steal(as: "alice", port: 9090)
        try measure(aloneMarked, header: "X-Dev: alice", answerer: "alice")
        try measure(aloneUnmarked, answerer: "pod")
        stand.servers.stop(alice, signal: SIGTERM)
    }
    /// Both tables redirect the port: the first claim's agent takes each connection, and hands one whose first
    /// request is bob's to bob's agent whole (PortShares, StolenAccepts).
    func shared() throws {
        let alice = try steal(as: "alice", port: 9090)
        let bob = try steal(as: "bob", port: 19090, agent: secondAgent, others: 1)
        try measure(sharedAlice, header: "X-Dev: alice", answerer: "alice")
        try measure(sharedBob, header: "X-Dev: bob", answerer: "bob")
        try measure(sharedUnmarked, answerer: "pod")
        stand.servers.stop(bob, signal: SIGTERM)
        stand.servers.stop(alice, signal: SIGTERM)
    }
    for round in 0..<options.rounds {
        // The cases take turns at coming first: each new connection leaves a TIME_WAIT behind for a minute, and
        // a case always measured after the other's thousands of connections would carry whatever they cost.
        let aloneFirst = round.isMultiple(of: 2)
        for aloneNow in [aloneFirst, !aloneFirst] {
            // The last sessions' tables go a moment after them.
            try waitUntil("the pod's port back from the last sessions") { stand.tables == 0 }
            if aloneNow {
                try measure(unfiltered, answerer: "pod")
                try alone()
            } else {
                try shared()
            }
        }
    }

    print(
        "Shared filtered steal (median of \(options.rounds)): the incoming stand-in's client, \(count) requests one at")
    print("a time, keep-alive / a new connection each; alice: --steal-header '^X-Dev: alice$' through the stand-in's")
    print("agent, claiming the port first; bob: '^X-Dev: bob$' through a second agent in the pod. Sharing, alice's")
    print("agent takes each connection and hands one whose first request is bob's to bob's agent whole; unmarked")
    print("requests go to the pod's application")
    print(
        pad("case", 46) + pad("keep-alive p50 µs", 19) + pad("p99 µs", 9) + pad("new conn p50 µs", 17)
            + pad("p99 µs", 9) + pad("added by sharing, µs p50: keep-alive", 38) + pad("new conn", 10)
            + "target ≤ +50")
    /// Each row, with the lone session's row that sharing is measured against.
    let rows: [(name: String, alone: String?)] = [
        (unfiltered, nil), (aloneMarked, nil), (aloneUnmarked, nil), (sharedAlice, aloneMarked),
        (sharedBob, aloneMarked), (sharedUnmarked, aloneUnmarked),
    ]
    var largest: (added: Double, row: String) = (-.infinity, "")
    for row in rows {
        var line = pad(row.name, 46)
        for mode in modes {
            line += pad(format(median(p50["\(row.name) \(mode)"]!)), mode == "keepalive" ? 19 : 17)
            line += pad(format(median(p99["\(row.name) \(mode)"]!)), 9)
        }
        if let alone = row.alone {
            let added = modes.map { median(p50["\(row.name) \($0)"]!) - median(p50["\(alone) \($0)"]!) }
            line += pad(String(format: "%+.1f", added[0]), 38) + pad(String(format: "%+.1f", added[1]), 10)
            line += added.allSatisfy { $0 <= 50 } ? "met" : "missed"
            for (mode, value) in zip(modes, added) where value > largest.added {
                largest = (value, "\(row.name), \(mode == "keepalive" ? "keep-alive" : "new connection")")
            }
        }
        print(line)
    }
    print(
        "target: sharing adds no more than 50 µs p50 to any of them; largest: \(String(format: "%+.1f", largest.added)) µs (\(largest.row)): \(largest.added <= 50 ? "met" : "missed")"
    )
    print("the shared rows are against the lone session's (bob's against alice's alone); \"no session\": the pod's")
    print("application with nothing stealing its port, for what a filtered session itself adds")
    print("")
}
