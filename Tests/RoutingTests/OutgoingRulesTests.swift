import Routing
import SyscallDecoding
import Testing

@Suite("Outgoing rules")
struct OutgoingRulesTests {
    func inet(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8, _ port: UInt16) -> SocketAddress {
        .inet(address: [a, b, c, d], port: port)
    }

    func inet6(_ text: [UInt8], _ port: UInt16) -> SocketAddress { .inet6(address: text, port: port, scope: 0) }

    static let mappedService: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 96, 0, 10]
    static let ipv6Loopback: [UInt8] = [UInt8](repeating: 0, count: 15) + [1]
    static let ula: [UInt8] = [0xfd, 0] + [UInt8](repeating: 0, count: 13) + [1]

    @Test func byDefaultEverythingButLoopbackIsRemote() throws {
        let rules = try OutgoingRules()
        #expect(rules.route(inet(10, 96, 0, 10, 80), transport: .tcp) == .remote)
        #expect(rules.route(inet(93, 184, 216, 34, 443), transport: .tcp) == .remote)
        #expect(rules.route(inet(127, 0, 0, 1, 6379), transport: .tcp) == .local)
        #expect(rules.route(inet(127, 1, 2, 3, 53), transport: .udp) == .local)
        #expect(rules.route(inet(0, 0, 0, 0, 80), transport: .tcp) == .local)
        #expect(rules.route(inet6(Self.ipv6Loopback, 80), transport: .tcp) == .local)
        #expect(rules.route(inet6(Self.ula, 80), transport: .tcp) == .remote)
        #expect(rules.route(.unix(path: Array("/run/x".utf8), abstract: false), transport: .tcp) == .local)
    }

    @Test func ipv4MappedAddressesAreTheirIPv4() throws {
        let rules = try OutgoingRules(local: ["10.96.0.10"])
        #expect(rules.route(inet6(Self.mappedService, 80), transport: .tcp) == .local)
        #expect(try OutgoingRules().route(inet6(Self.mappedService, 80), transport: .tcp) == .remote)
    }

    @Test func localBeatsRemoteBeatsTheDefault() throws {
        let rules = try OutgoingRules(
            local: ["10.96.0.0/16", "udp://10.97.0.1:53"], remote: ["10.96.5.0/24", "127.0.0.1:9999", "[fd00::]/8:443"])
        #expect(rules.route(inet(10, 96, 5, 1, 80), transport: .tcp) == .local)
        #expect(rules.route(inet(127, 0, 0, 1, 9999), transport: .tcp) == .remote)
        #expect(rules.route(inet(127, 0, 0, 1, 9998), transport: .tcp) == .local)
        #expect(rules.route(inet(10, 97, 0, 1, 53), transport: .udp) == .local)
        #expect(rules.route(inet(10, 97, 0, 1, 53), transport: .tcp) == .remote)
        #expect(rules.route(inet6(Self.ula, 443), transport: .tcp) == .remote)
    }

    @Test func namesResolveWhenTheRulesAreMade() throws {
        let rules = try OutgoingRules(
            local: ["registry.example:443"],
            resolve: { $0 == "registry.example" ? [[10, 1, 2, 3], Self.ula] : [] })
        #expect(rules.route(inet(10, 1, 2, 3, 443), transport: .tcp) == .local)
        #expect(rules.route(inet6(Self.ula, 443), transport: .tcp) == .local)
        #expect(rules.route(inet(10, 1, 2, 3, 80), transport: .tcp) == .remote)
        #expect {
            try OutgoingRules(remote: ["web"])
        } throws: { error in
            "\(error)".contains("does not resolve on this machine")
        }
    }

    @Test func noOutgoingKeepsEverythingLocal() throws {
        let rules = try OutgoingRules(enabled: false, remote: ["10.0.0.0/8"])
        #expect(rules.route(inet(10, 96, 0, 10, 80), transport: .tcp) == .local)
    }

    @Test(
        "Bad entries say what is wrong",
        arguments: [
            ("http://10.0.0.1", "tcp:// or udp://"), ("web/24", "needs an address"), ("10.0.0.1:0", "port"),
            ("we b", "neither an address nor a name"),
            ("10.0.0.0/33", "prefix length is out of range"), ("[fd00::", "without its ]"), ("10.0.0.0/x", "prefix"),
        ])
    func invalid(entry: String, problem: String) {
        #expect {
            try OutgoingRule(parsing: entry)
        } throws: { error in
            "\(error)".contains(problem) && "\(error)".contains(entry)
        }
    }
}
