import Testing

@testable import Incoming

@Test func writesOneTablePerSession() {
    var plan = NetfilterPlan(agentPID: 4242, session: 3)
    #expect(plan.table == "sysmirror_4242_3")
    #expect(plan.script == "table inet sysmirror_4242_3\ndelete table inet sysmirror_4242_3\n")
    plan.steals = [8080: 41000, 443: 41001]
    plan.mirrors = [9090, 9091]
    plan.logGroup = 12345
    #expect(
        plan.script == """
            table inet sysmirror_4242_3
            delete table inet sysmirror_4242_3
            table inet sysmirror_4242_3 {
              chain steal {
                type nat hook prerouting priority dstnat - 10; policy accept;
                meta mark 0x53594d01 return
                tcp dport 443 jump steal_443
                tcp dport 8080 jump steal_8080
              }
              chain steal_443 {
                meta l4proto tcp redirect to :41001
              }
              chain steal_8080 {
                meta l4proto tcp redirect to :41000
              }
              chain mirror {
                type filter hook prerouting priority raw; policy accept;
                tcp dport { 9090, 9091 } log group 12345 snaplen 65535
              }
            }

            """)
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
    #expect(NetfilterPlan.owner(of: "sysmirror_77_1") == 77)
    #expect(NetfilterPlan.owner(of: "filter") == nil)
    #expect(NetfilterPlan.stolenPort(chain: "steal_8080") == 8080)
    #expect(NetfilterPlan.stolenPort(chain: "steal") == nil)
}
