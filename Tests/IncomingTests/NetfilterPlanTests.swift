import Testing

@testable import Incoming

@Test func writesOneTablePerSessionAndKeepsItsBaseChains() {
    let empty = NetfilterPlan(agent: "4242", session: 3)
    #expect(empty.table == "sysmirror_4242_3" && empty.isEmpty)
    var plan = empty
    plan.steals = [8080: 41000, 443: 41001]
    plan.mirrors = [9090, 9091]
    plan.logGroup = 12345
    #expect(
        plan.script(after: empty) == """
            table inet sysmirror_4242_3 {
              chain steal { type nat hook prerouting priority dstnat - 10; policy accept; }
              chain steal_443 { }
              chain steal_8080 { }
              chain mirror { type filter hook prerouting priority raw; policy accept; }
            }
            flush chain inet sysmirror_4242_3 steal
            add rule inet sysmirror_4242_3 steal meta mark 0x53594d01 return
            add rule inet sysmirror_4242_3 steal tcp dport 443 jump steal_443
            add rule inet sysmirror_4242_3 steal tcp dport 8080 jump steal_8080
            flush chain inet sysmirror_4242_3 steal_443
            add rule inet sysmirror_4242_3 steal_443 meta l4proto tcp redirect to :41001
            flush chain inet sysmirror_4242_3 steal_8080
            add rule inet sysmirror_4242_3 steal_8080 meta l4proto tcp redirect to :41000
            flush chain inet sysmirror_4242_3 mirror
            add rule inet sysmirror_4242_3 mirror meta mark 0x53594d01 return
            add rule inet sysmirror_4242_3 mirror tcp dport { 9090, 9091 } tcp flags & (fin | syn | rst) == 0 tcp doff 5 ip length 40 return
            add rule inet sysmirror_4242_3 mirror tcp dport { 9090, 9091 } tcp flags & (fin | syn | rst) == 0 tcp doff 8 ip length 52 return
            add rule inet sysmirror_4242_3 mirror tcp dport { 9090, 9091 } tcp flags & (fin | syn | rst) == 0 tcp doff 5 ip6 length 20 return
            add rule inet sysmirror_4242_3 mirror tcp dport { 9090, 9091 } tcp flags & (fin | syn | rst) == 0 tcp doff 8 ip6 length 32 return
            add rule inet sysmirror_4242_3 mirror tcp dport { 9090, 9091 } log group 12345 snaplen 65535

            """)
    // Giving ports back empties the base chains and retires the ports' own (their redirect rules stay for
    // the connections they redirected, which would be reset without them).
    var after = plan
    after.steals = [:]
    after.mirrors = []
    #expect(!after.isEmpty)
    #expect(
        after.script(after: plan) == """
            table inet sysmirror_4242_3 {
              chain steal { type nat hook prerouting priority dstnat - 10; policy accept; }
              chain mirror { type filter hook prerouting priority raw; policy accept; }
            }
            flush chain inet sysmirror_4242_3 steal
            add rule inet sysmirror_4242_3 steal meta mark 0x53594d01 return
            rename chain inet sysmirror_4242_3 steal_443 retired_443_41001
            rename chain inet sysmirror_4242_3 steal_8080 retired_8080_41000
            flush chain inet sysmirror_4242_3 mirror

            """)
    #expect(NetfilterPlan.deletion(of: plan.table) == "delete table inet sysmirror_4242_3\n")
}

@Test func readsSessionTablesFromAListing() {
    let listing = """
        table ip filter {
        \tchain INPUT {
        \t\ttype filter hook input priority filter; policy accept;
        \t}
        }
        table inet sysmirror_77_1 {
        \tchain steal {
        \t\ttype nat hook prerouting priority dstnat - 10; policy accept;
        \t}
        \tchain steal_8080 {
        \t}
        }
        table inet sysmirror_78_2 {
        }
        """
    let tables = NetfilterPlan.sessionTables(inListing: listing)
    #expect(tables == ["sysmirror_77_1": ["steal", "steal_8080"], "sysmirror_78_2": []])
    #expect(NetfilterPlan.owner(of: "sysmirror_5f3a09c1_1") == "5f3a09c1")
    #expect(NetfilterPlan.owner(of: "filter") == nil)
}

/// A later claim of a shared port redirects after the earlier ones: its base chain's priority is later.
@Test func laterClaimsRedirectLater() {
    var second = NetfilterPlan(agent: "b2", session: 1)
    second.stealOrder = 1
    second.steals = [8080: 41000]
    #expect(second.script(after: NetfilterPlan(agent: "b2", session: 1)).contains("priority dstnat - 9;"))
    var far = second
    far.stealOrder = 40
    #expect(far.script(after: second).contains("priority dstnat - 1;"))
}
