/// The pod's DNS answers a session has seen, each kept for its lifetime (`DNSMessage.lifetime`): a repeated
/// lookup costs no round trip. Pure: the caller gives the time, in nanoseconds of a monotonic clock.
///
/// An answer the server says not to keep (TTL 0, or a failure) still answers the lookup it was fetched for:
/// the follow-up queries of one lookup (the next candidate of the search list, the AAAA beside the A) come
/// within milliseconds, so such an answer is kept for `lookupWindow` and answers once.
public struct AnswerCache: Sendable {
    /// Answers are asked for by server (a sockaddr's bytes) and question.
    public struct Key: Hashable, Sendable {
        public var server: [UInt8]
        public var question: DNSQuestion
        public init(server: [UInt8], question: DNSQuestion) {
            self.server = server
            self.question = question
        }
    }

    struct Entry {
        var answer: [UInt8]
        var stored: UInt64
        var expires: UInt64
        /// Kept only for its own lookup: gone once it has answered.
        var once: Bool
    }

    public static let lookupWindow: UInt64 = 2_000_000_000
    /// Enough for any program's working set of names; beyond it the entries closest to expiry go first.
    public static let capacity = 4096
    private var entries: [Key: Entry] = [:]

    public init() {}

    public var count: Int { entries.count }

    public mutating func store(_ answer: [UInt8], for key: Key, now: UInt64) {
        let lifetime = DNSMessage.lifetime(answer).map { UInt64($0) * 1_000_000_000 } ?? 0
        if entries.count >= Self.capacity && entries[key] == nil { evict(now: now) }
        entries[key] = Entry(
            answer: answer, stored: now, expires: now + max(lifetime, Self.lookupWindow),
            once: lifetime < Self.lookupWindow)
    }

    /// The answer kept for `key` and its age in whole seconds, if it is still good.
    public mutating func take(_ key: Key, now: UInt64) -> (answer: [UInt8], age: UInt32)? {
        guard let entry = entries[key] else { return nil }
        guard now < entry.expires else {
            entries[key] = nil
            return nil
        }
        if entry.once { entries[key] = nil }
        // A caller may have read its clock a moment before another thread stored the answer: age 0.
        let age = now > entry.stored ? (now - entry.stored) / 1_000_000_000 : 0
        return (entry.answer, UInt32(age))
    }

    /// Forgets everything (the link came back: the pod's answers may have changed meanwhile).
    public mutating func removeAll() { entries = [:] }

    private mutating func evict(now: UInt64) {
        entries = entries.filter { $0.value.expires > now }
        guard entries.count >= Self.capacity else { return }
        let soonest = entries.sorted { $0.value.expires < $1.value.expires }.prefix(Self.capacity / 4).map(\.key)
        for key in soonest { entries[key] = nil }
    }
}
