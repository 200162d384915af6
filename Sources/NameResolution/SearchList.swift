/// The pod's search list, from its resolv.conf (`search`, or `domain` where no `search` line is), and what it
/// tells about a query: every name the pod's resolver may try for the same lookup, so that all of them are
/// asked at once, in one round trip, however many the program's resolver tries one after the other.
public struct SearchList: Sendable, Equatable {
    /// Lower case, without final dots, in the file's order.
    public var domains: [String]

    public init(domains: [String]) {
        self.domains = domains.map(DNSMessage.canonical).filter { !$0.isEmpty }
    }

    /// resolv.conf's text (resolv.conf(5)): the last `search` or `domain` line wins, as in glibc.
    public init(resolverConfiguration text: String) {
        var domains: [String] = []
        for words in Self.lines(resolverConfiguration: text) where words[0] == "search" || words[0] == "domain" {
            domains = words.dropFirst().map(String.init)
        }
        self.init(domains: domains)
    }

    /// The name servers of resolv.conf's text, in its order (`nameserver` lines, as written).
    public static func nameServers(resolverConfiguration text: String) -> [String] {
        lines(resolverConfiguration: text).compactMap { words in
            words.count > 1 && words[0] == "nameserver" ? String(words[1]) : nil
        }
    }

    /// resolv.conf's lines that say something, each as its words: comments (# or ;) and blank lines left out.
    private static func lines(resolverConfiguration text: String) -> [[Substring]] {
        text.split(whereSeparator: \.isNewline).compactMap { line in
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard let keyword = words.first, !keyword.hasPrefix("#"), !keyword.hasPrefix(";") else { return nil }
            return words
        }
    }

    /// The names a resolver may ask for in the lookup that asked `name` first or next: when `name` is one of
    /// the search list's expansions of some shorter name (its longest matching domain taken off), that name
    /// with every domain and bare; otherwise `name` itself and its expansions (a resolver that tries a name
    /// with enough dots bare first goes on to them when it does not exist). `name` comes first.
    public func candidates(for name: String) -> [String] {
        let name = DNSMessage.canonical(name)
        let base = domains.filter { name.hasSuffix("." + $0) }.max { $0.count < $1.count }
            .map { String(name.dropLast($0.count + 1)) }
        let stem = base ?? name
        var names = [name]
        for candidate in domains.map({ stem + "." + $0 }) + [stem] where !names.contains(candidate) {
            names.append(candidate)
        }
        return names
    }

    /// The types asked together: a resolver that asks for an A record asks for the AAAA record right after
    /// or beside it (glibc, musl, Go), and the other way round.
    public static func companionTypes(of type: UInt16) -> [UInt16] {
        switch type {
        case DNSMessage.typeA: [DNSMessage.typeA, DNSMessage.typeAAAA]
        case DNSMessage.typeAAAA: [DNSMessage.typeAAAA, DNSMessage.typeA]
        default: [type]
        }
    }

    /// Every question of the lookup that asked `question`, in the order to ask: `question` first.
    public func questions(for question: DNSQuestion) -> [DNSQuestion] {
        candidates(for: question.name).flatMap { name in
            Self.companionTypes(of: question.type).map { DNSQuestion(name: name, type: $0, class: question.class) }
        }
    }
}
