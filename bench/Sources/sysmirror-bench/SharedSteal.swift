// Shared filtered steal (docs/incoming.md, issue 17): what sharing a stolen port costs each request, measured
// on the incoming stand-in (IncomingPod) with one filtered session alone on a port and two sharing another,
// all at once, their requests taking turns.
import Foundation

/// Round trips of requests to the pod's ports, every case in one rotation (`httpbench rotate`), so that each
/// meets the same moments of the machine: alice's session alone steals `X-Dev: alice` of port 9090, and
/// bob's alone `X-Dev: bob` of port 9093 through a second agent in the pod's namespace; on port 9091,
/// alice's second session (through the stand-in's agent, claiming first) and bob's second (through the
/// second agent) share the port; nothing steals port 9092. Each shared case is set against the same
/// developer's session alone through the same agent. Marked requests go to their session's server,
/// unmarked ones to the pod's application; every answer is checked to come from where it should.
func sharedSteal() throws {
    try IncomingPod.with(tag: "s") { stand in try sharedSteal(on: stand) }
}

func sharedSteal(on stand: IncomingPod) throws {
    let secondAgent = "\(stand.socket).2"
    try startAgent(in: stand.pod, socket: secondAgent, servers: stand.servers)
    for port in [9091, 9092, 9093] {
        _ = try stand.servers.start(stand.inPod + ["\(work)/httpbench", "serve", "0.0.0.0:\(port)"])
    }
    let count = options.rounds >= 5 ? 500 : 200
    let modes = ["keepalive", "close"]

    struct Case {
        let name: String
        let port: Int
        let header: String?
        let answerer: String
        /// The case that sharing is measured against.
        var alone: String? = nil
        var target: String {
            "http://\(IncomingPod.address):\(port)/" + (header.map { "|\($0)" } ?? "")
        }
    }
    let aloneAlice = "alone: alice's → alice (agent 1)", aloneBob = "alone: bob's → bob (agent 2)"
    let aloneUnmarked = "alone: unmarked → pod"
    let cases = [
        Case(name: "no session: unmarked → pod", port: 9092, header: nil, answerer: "pod"),
        Case(name: aloneAlice, port: 9090, header: "X-Dev: alice", answerer: "alice"),
        Case(name: aloneBob, port: 9093, header: "X-Dev: bob", answerer: "bob"),
        Case(name: aloneUnmarked, port: 9090, header: nil, answerer: "pod"),
        Case(
            name: "shared: alice's → alice (1st claim, agent 1)", port: 9091, header: "X-Dev: alice", answerer: "alice",
            alone: aloneAlice),
        Case(
            name: "shared: bob's → bob (2nd claim, agent 2)", port: 9091, header: "X-Dev: bob", answerer: "bob",
            alone: aloneBob),
        Case(name: "shared: unmarked → pod", port: 9091, header: nil, answerer: "pod", alone: aloneUnmarked),
    ]

    /// `name`'s session, stealing the pod's `port` requests marked `X-Dev: NAME` for a server on local port
    /// `local` that answers NAME, through the agent on `agent` (by default the stand-in's), beside `others`
    /// sessions.
    var sessions: [Process] = []
    // Ended as a user ends them (SIGTERM), whatever happens: a SIGKILL leaves their programs behind.
    defer { for session in sessions.reversed() { stand.servers.stop(session, signal: SIGTERM) } }
    func steal(as name: String, port: Int, local: Int, agent: String? = nil, others: Int) throws {
        sessions += [
            try stand.session(
                "steal", listen: "127.0.0.1:\(local)", answer: name,
                extra: ["--steal-header", "^X-Dev: \(name)$", "--port-map", "\(local):\(port)"], agent: agent,
                others: others)
        ]
        // A claim reaches the pod's other agents a moment after its table is up (PortShares).
        let marked = Case(name: name, port: port, header: "X-Dev: \(name)", answerer: name)
        try waitUntil("\(name)'s marked requests to port \(port) answered by \(name)") {
            stand.rotate([marked.target], 1, "close").first?.answers == name
        }
    }
    try steal(as: "alice", port: 9090, local: 9090, others: 0)
    try steal(as: "alice", port: 9091, local: 9091, others: 1)
    try steal(as: "bob", port: 9091, local: 19091, agent: secondAgent, others: 2)
    try steal(as: "bob", port: 9093, local: 19093, agent: secondAgent, others: 3)

    var p50: [String: [Double]] = [:], p99: [String: [Double]] = [:], added: [String: [Double]] = [:]
    // Rounds of a Williams design: across them, every case comes right after every other twice.
    let rounds = options.rounds >= 5 ? 2 * cases.count : cases.count
    // A request runs beside what the one before it left behind (its connection's close, its agent's
    // bookkeeping): the order changes each round, so that each case follows every other in turn.
    let williams = (0..<cases.count).map { $0 % 2 == 0 ? $0 / 2 : cases.count - 1 - $0 / 2 }
    for round in 0..<rounds {
        for mode in modes {
            let shifted = williams.map { cases[($0 + round) % cases.count] }
            let order = (round / cases.count).isMultiple(of: 2) ? shifted : shifted.reversed()
            var measured: [String: Double] = [:]
            for (kind, result) in zip(order, stand.rotate(order.map(\.target), count, mode)) {
                guard result.answers == kind.answerer else {
                    throw BenchError(
                        description: "\(kind.name) (\(mode)): answered by \(result.answers), not \(kind.answerer)")
                }
                p50["\(kind.name) \(mode)", default: []].append(result.p50)
                p99["\(kind.name) \(mode)", default: []].append(result.p99)
                measured[kind.name] = result.p50
            }
            for kind in cases {
                if let alone = kind.alone {
                    added["\(kind.name) \(mode)", default: []].append(measured[kind.name]! - measured[alone]!)
                }
            }
        }
    }

    print(
        "Shared filtered steal (median of \(rounds) rounds): the incoming stand-in's client, \(count) requests of each case"
    )
    print("per round, one at a time, taking turns in a new order each round (each case right after every other")
    print("twice in \(2 * cases.count) rounds); keep-alive / a new connection each. Alone: alice's --steal-header")
    print("'^X-Dev: alice$' of port 9090 through the stand-in's agent, bob's '^X-Dev: bob$' of port 9093 through a")
    print("second agent in the pod. Shared: port 9091, alice's second session (through the first agent, claiming")
    print("first) and bob's second (through the second); alice's agent takes each connection and hands one whose")
    print("first request is bob's to bob's agent whole. Unmarked requests go to the pod's application; nothing")
    print("steals port 9092")
    print(
        pad("case", 46) + pad("keep-alive p50 µs", 19) + pad("p99 µs", 9) + pad("new conn p50 µs", 17)
            + pad("p99 µs", 9) + pad("added by sharing, µs p50: keep-alive", 38) + pad("new conn", 10)
            + "target ≤ +50")
    var largest: (added: Double, row: String) = (-.infinity, "")
    for kind in cases {
        var line = pad(kind.name, 46)
        for mode in modes {
            line += pad(format(median(p50["\(kind.name) \(mode)"]!)), mode == "keepalive" ? 19 : 17)
            line += pad(format(median(p99["\(kind.name) \(mode)"]!)), 9)
        }
        if kind.alone != nil {
            let differences = modes.map { median(added["\(kind.name) \($0)"]!) }
            line += pad(String(format: "%+.1f", differences[0]), 38) + pad(String(format: "%+.1f", differences[1]), 10)
            line += differences.allSatisfy { $0 <= 50 } ? "met" : "missed"
            for (mode, value) in zip(modes, differences) where value > largest.added {
                largest = (value, "\(kind.name), \(mode == "keepalive" ? "keep-alive" : "new connection")")
            }
        }
        print(line)
    }
    print(
        "target: sharing adds no more than 50 µs p50 to any of them; largest: \(String(format: "%+.1f", largest.added)) µs (\(largest.row)): \(largest.added <= 50 ? "met" : "missed")"
    )
    print("added: the median of each round's difference from the same developer's session alone, through the same")
    print("agent, in the same rotation; \"no session\": the pod's application with nothing stealing its port")
    print("")
}
