import SyscallDecoding

#if canImport(Glibc)
    import Glibc
#endif

/// The transport of an outgoing connection.
public enum Transport: String, Sendable, Equatable {
    case tcp, udp
}

/// An entry of `outgoing.local` or `outgoing.remote` that does not parse.
public struct InvalidOutgoingRule: Error, Sendable, Equatable, CustomStringConvertible {
    public let entry: String
    public let problem: String
    public var description: String {
        "outgoing rule \(entry.debugDescription): \(problem); expected [tcp://|udp://]HOST[/PREFIX][:PORT], IPv6 in brackets before a port"
    }
}

/// One entry: `[tcp://|udp://]HOST[/PREFIX][:PORT]`, where HOST is an address or a name: `10.96.0.0/12`,
/// `udp://10.96.0.10:53`, `[fd00::]/8:443`, `registry.example.com:443`.
public struct OutgoingRule: Sendable, Equatable {
    public let transport: Transport?
    /// 4 or 16 bytes; empty for a name not resolved yet.
    public let network: [UInt8]
    public let prefixLength: Int
    public let port: UInt16?
    /// The host name, for an entry that names one.
    public let name: String?

    init(transport: Transport?, network: [UInt8], prefixLength: Int, port: UInt16?, name: String?) {
        self.transport = transport
        self.network = network
        self.prefixLength = prefixLength
        self.port = port
        self.name = name
    }

    public init(parsing entry: String) throws(InvalidOutgoingRule) {
        var rest = Substring(entry)
        if rest.hasPrefix("tcp://") {
            transport = .tcp
            rest = rest.dropFirst(6)
        } else if rest.hasPrefix("udp://") {
            transport = .udp
            rest = rest.dropFirst(6)
        } else if rest.contains("://") {
            throw InvalidOutgoingRule(entry: entry, problem: "the scheme must be tcp:// or udp://")
        } else {
            transport = nil
        }
        var host: Substring
        var portText: Substring?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else {
                throw InvalidOutgoingRule(entry: entry, problem: "a [ without its ]")
            }
            host = rest[rest.index(after: rest.startIndex)..<close]
            var after = rest[rest.index(after: close)...]
            if after.hasPrefix("/") {
                let prefixEnd = after.firstIndex(of: ":") ?? after.endIndex
                host += after[..<prefixEnd]
                after = after[prefixEnd...]
            }
            if after.hasPrefix(":") {
                portText = after.dropFirst()
            } else if !after.isEmpty {
                throw InvalidOutgoingRule(entry: entry, problem: "unexpected \(after.debugDescription)")
            }
        } else if rest.filter({ $0 == ":" }).count == 1, let colon = rest.firstIndex(of: ":") {
            host = rest[..<colon]
            portText = rest[rest.index(after: colon)...]
        } else {
            host = rest
        }
        if let portText {
            guard let port = UInt16(portText), port > 0 else {
                throw InvalidOutgoingRule(entry: entry, problem: "the port must be a number from 1 to 65535")
            }
            self.port = port
        } else {
            port = nil
        }
        var prefix: Int?
        if let slash = host.firstIndex(of: "/") {
            guard let length = Int(host[host.index(after: slash)...]) else {
                throw InvalidOutgoingRule(entry: entry, problem: "the prefix length must be a number")
            }
            prefix = length
            host = host[..<slash]
        }
        guard let address = Self.address(String(host)) else {
            guard prefix == nil else {
                throw InvalidOutgoingRule(entry: entry, problem: "a prefix length needs an address, not a name")
            }
            guard !host.isEmpty, host.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" }) else {
                throw InvalidOutgoingRule(
                    entry: entry, problem: "\(String(host).debugDescription) is neither an address nor a name")
            }
            (network, prefixLength, name) = ([], 0, String(host))
            return
        }
        name = nil
        network = address
        prefixLength = prefix ?? address.count * 8
        guard (0...(address.count * 8)).contains(prefixLength) else {
            throw InvalidOutgoingRule(entry: entry, problem: "the prefix length is out of range")
        }
    }

    /// 4 bytes for IPv4 text, 16 for IPv6, nil otherwise (inet_pton: pure, no system call).
    package static func address(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: v6) { Array($0) } }
        return nil
    }

    /// The rule for each of `addresses` (a name's).
    func resolved(to addresses: [[UInt8]]) -> [OutgoingRule] {
        addresses.map {
            OutgoingRule(transport: transport, network: $0, prefixLength: $0.count * 8, port: port, name: nil)
        }
    }

    func matches(_ address: [UInt8], port: UInt16, transport: Transport) -> Bool {
        if let wanted = self.transport, wanted != transport { return false }
        if let wanted = self.port, wanted != port { return false }
        guard address.count == network.count else { return false }
        var bits = prefixLength
        for index in 0..<address.count where bits > 0 {
            let mask: UInt8 = bits >= 8 ? 0xff : ~(0xff >> UInt8(bits))
            if address[index] & mask != network[index] & mask { return false }
            bits -= 8
        }
        return true
    }
}

/// Pure rules for outgoing connections: `outgoing.local` first, then `outgoing.remote`, then the default:
/// loopback local, everything else from the pod.
public struct OutgoingRules: Sendable, Equatable {
    /// false: `--no-outgoing`, all traffic local.
    public let enabled: Bool
    public let local: [OutgoingRule]
    public let remote: [OutgoingRule]

    /// - Parameter resolve: a name's addresses (4 or 16 bytes each), looked up when the rules are made;
    ///   empty when the name does not resolve.
    public init(
        enabled: Bool = true, local: [String] = [], remote: [String] = [],
        resolve: (String) -> [[UInt8]] = { _ in [] }
    ) throws(InvalidOutgoingRule) {
        self.enabled = enabled
        func parse(_ entries: [String]) throws(InvalidOutgoingRule) -> [OutgoingRule] {
            var rules: [OutgoingRule] = []
            for entry in entries {
                let rule = try OutgoingRule(parsing: entry)
                guard let name = rule.name else {
                    rules.append(rule)
                    continue
                }
                let addresses = resolve(name)
                guard !addresses.isEmpty else {
                    throw InvalidOutgoingRule(
                        entry: entry,
                        problem:
                            "\(name.debugDescription) does not resolve on this machine (names are looked up here, when the session starts; a cluster name resolves only in the pod: give its address or CIDR)"
                    )
                }
                rules += rule.resolved(to: addresses)
            }
            return rules
        }
        self.local = try parse(local)
        self.remote = try parse(remote)
    }

    /// Where a connection to `destination` goes; AF_UNIX and other families stay local.
    public func route(_ destination: SocketAddress, transport: Transport) -> FileRoute {
        guard enabled, var (address, port) = Self.internet(destination) else { return .local }
        // An IPv4-mapped IPv6 address is the IPv4 one.
        if address.count == 16 && address[0..<10].allSatisfy({ $0 == 0 }) && address[10] == 0xff
            && address[11] == 0xff
        {
            address = Array(address[12...])
        }
        if local.contains(where: { $0.matches(address, port: port, transport: transport) }) { return .local }
        if remote.contains(where: { $0.matches(address, port: port, transport: transport) }) { return .remote }
        return Self.isLoopback(address) ? .local : .remote
    }

    static func internet(_ destination: SocketAddress) -> ([UInt8], UInt16)? {
        switch destination {
        case .inet(let address, let port): (address, port)
        case .inet6(let address, let port, _): (address, port)
        case .unix, .other: nil
        }
    }

    /// Loopback, and the unspecified address, which connect() takes to mean this machine.
    static func isLoopback(_ address: [UInt8]) -> Bool {
        if address.count == 4 { return address[0] == 127 || address == [0, 0, 0, 0] }
        return address[0..<15].allSatisfy { $0 == 0 } && address[15] <= 1
    }
}
