import AgentProtocol
import Testing

@testable import Incoming

/// Who may share a stolen port, and who gets a request: pure policy, no kernel.
struct PortSharingTests {
    func claim(
        _ agent: String, _ session: UInt32, at time: UInt64, header: String = "", path: String = "",
        developer: String = "dev"
    ) -> PortClaim {
        PortClaim(
            owner: .init(agent: agent, session: session), port: 8080, registeredAt: time, headerPattern: header,
            pathPattern: path, developer: developer, table: "sysmirror_\(agent)_\(session)")
    }

    @Test func filteredStealsShare() {
        let alice = claim("a1", 1, at: 10, header: "^X-Dev: alice$", developer: "alice@a")
        let bob = claim("b2", 1, at: 20, header: "^X-Dev: bob$", developer: "bob@b")
        #expect(PortSharing.refusal(of: bob, beside: [alice]) == nil)
        #expect(PortSharing.refusal(of: alice, beside: [alice]) == nil)  // its own claim is not in its way
    }

    @Test func aWholeStealIsAlone() throws {
        let alice = claim("a1", 1, at: 10, header: "^X-Dev: alice$", developer: "alice@a")
        let whole = claim("c3", 2, at: 30, developer: "carol@c")
        let refused = try #require(PortSharing.refusal(of: whole, beside: [alice]))
        #expect(refused.contains("shared by sessions that steal only the requests their filter matches"))
        #expect(refused.contains("alice@a's (--steal-header '^X-Dev: alice$')"))
        #expect(refused.contains("--incoming mirror"))

        let filtered = try #require(PortSharing.refusal(of: alice, beside: [whole]))
        #expect(
            filtered.contains("already stolen by another sysmirror session, carol@c's (netfilter table sysmirror_c3_2)")
        )
        #expect(filtered.contains("a filtered steal shares a port only with other filtered steals"))

        let second = try #require(PortSharing.refusal(of: claim("d4", 1, at: 40), beside: [whole]))
        #expect(second.hasPrefix("port 8080 of the pod is already stolen by another sysmirror session, carol@c's"))
        #expect(!second.contains("filtered"))
    }

    @Test func claimsOnOtherPortsAreNotInTheWay() {
        var other = claim("c3", 2, at: 30)
        other.port = 9090
        #expect(PortSharing.refusal(of: claim("d4", 1, at: 40), beside: [other]) == nil)
    }

    @Test func theEarliestMatchWinsAndTheOthersMissIt() {
        let late = claim("b2", 1, at: 20)
        let early = claim("a1", 1, at: 10)
        let tie = claim("a1", 2, at: 20)
        let ordered = PortSharing.ordered([late, tie, early])
        #expect(ordered.map(\.owner) == [early.owner, tie.owner, late.owner])
        let (winner, missed) = PortSharing.route(ordered) { $0.owner.session == 1 }
        #expect(winner == early && missed == [late])
        #expect(PortSharing.route(ordered) { _ in false } == (nil, []))
    }

    @Test func agentsAreFoundByTheirListeningBeacons() {
        let listing = """
            Num       RefCount Protocol Flags    Type St Inode Path
            0000000000000000: 00000002 00000000 00010000 0001 01 30001 @sysmirror-agent-5f3a09c1
            0000000000000000: 00000003 00000000 00000000 0001 03 30002 @sysmirror-agent-5f3a09c1
            0000000000000000: 00000002 00000000 00010000 0001 01 30003 @sysmirror-port-8080
            0000000000000000: 00000002 00000000 00010000 0001 01 30004 /run/agent.sock
            0000000000000000: 00000002 00000000 00010000 0001 01 30005 @sysmirror-agent-0000beef
            0000000000000000: 00000002 00000000 00000000 0002 07 30006
            """
        #expect(
            PortSharing.listeningAbstractNames(inProcNetUnix: listing, prefix: "sysmirror-agent-")
                == ["sysmirror-agent-5f3a09c1", "sysmirror-agent-0000beef"])
    }
}
