import AgentLink
import AgentProtocol
import LinuxSystem
import Logging
import NameResolution
import Synchronization
import SyscallDecoding

#if canImport(Glibc)
    import Glibc
#endif

/// The pod's DNS where the agent is reached through a port-forward: a program's queries to a name server of
/// the pod (UDP or TCP, port 53) are answered here, in one round trip per lookup rather than one per query.
///
/// A query that is not kept asks the agent for every question of its lookup at once: each candidate of the
/// pod's search list (the program's resolver tries them one after the other while each is not found) and
/// A beside AAAA. The answers are kept (`AnswerCache`), so the lookup's next queries, and later lookups of
/// the same names within their TTL, are answered here at once. Queries of a lookup that arrive while its
/// questions are being asked wait for that same answer.
package final class PodNames: Sendable {
    /// Answers a query's sender with one DNS message.
    package typealias Reply = @Sendable ([UInt8]) -> Void

    struct Waiter {
        let query: DNSQuery
        let udp: Bool
        let reply: Reply
    }

    struct State {
        var cache = AnswerCache()
        /// Questions asked of the agent and not yet answered, with the queries waiting for them.
        var asked: [AnswerCache.Key: [Waiter]] = [:]
        /// Nil until the pod's resolv.conf is read.
        var searchList: SearchList?
        /// Whether this service asked the agent for resolv.conf itself.
        var readingSearchList = false
    }

    let client: AgentClient
    /// Where the pod's resolv.conf may be kept already (fetched with the session's hello).
    let files: FileCache?
    let logger: Logger
    private let state = Mutex(State())
    static let resolverConfiguration = Array("/etc/resolv.conf".utf8)

    package init(client: AgentClient, files: FileCache?, logger: Logger) {
        self.client = client
        self.files = files
        self.logger = logger
        // The file cache fetches resolv.conf with the session's hello; without it, it is read here.
        if files == nil { readSearchList() }
        // After a cut, what was kept may be stale: the pod may have changed meanwhile.
        client.whenLinkFails { [self] _ in state.withLock { $0.cache.removeAll() } }
    }

    /// The pod's search list, read once: at the start without a file cache, else at the first lookup that
    /// finds the cache without it; until it comes, a lookup asks for its own name only.
    private func readSearchList() {
        let first = state.withLock { state in
            defer { state.readingSearchList = true }
            return !state.readingSearchList
        }
        guard first else { return }
        let content = Mutex<[UInt8]>([])
        client.send(.open(path: Self.resolverConfiguration, flags: O_RDONLY, mode: 0)) { [self] reply in
            switch reply {
            case .response(.opened): return .expectingMore
            case .chunk(let bytes):
                content.withLock { $0 += bytes }
                return .expectingMore
            case .end:
                let list = SearchList(resolverConfiguration: String(decoding: content.withLock { $0 }, as: UTF8.self))
                state.withLock { $0.searchList = $0.searchList ?? list }
                return .complete
            case .response, .linkFailure:
                return .complete
            }
        }
    }

    /// Answers `message`, a program's query to `server`; `udp`: the answer must fit what the query takes
    /// over UDP (a larger one is cut with TC, and the resolver asks again over TCP, answered from the cache).
    /// False for a message that is not a standard query: the caller sends it to the pod as it is.
    package func answer(_ message: [UInt8], server: SocketAddress, udp: Bool, reply: @escaping Reply) -> Bool {
        guard let query = DNSMessage.query(message) else { return false }
        let key = AnswerCache.Key(server: server.bytes, question: query.question)
        let now = Clock.monotonic()
        if state.withLock({ $0.searchList == nil }) {
            if let kept = keptSearchList() {
                state.withLock { $0.searchList = $0.searchList ?? kept }
            } else {
                readSearchList()
            }
        }
        enum Step {
            case kept([UInt8], age: UInt32)
            case waiting
            case ask([DNSQuestion])
        }
        let step = state.withLock { state -> Step in
            if let (answer, age) = state.cache.take(key, now: now) { return .kept(answer, age: age) }
            let waiter = Waiter(query: query, udp: udp, reply: reply)
            if state.asked[key] != nil {
                state.asked[key]!.append(waiter)
                return .waiting
            }
            let questions = (state.searchList ?? SearchList(domains: [])).questions(for: query.question).filter {
                question in
                let other = AnswerCache.Key(server: key.server, question: question)
                return other == key || state.asked[other] == nil
            }
            for question in questions { state.asked[AnswerCache.Key(server: key.server, question: question)] = [] }
            state.asked[key] = [waiter]
            return .ask(questions)
        }
        switch step {
        case .kept(let answer, let age):
            reply(DNSMessage.answer(answer, to: query, age: age, udp: udp))
        case .waiting:
            break
        case .ask(let questions):
            ask(questions, server: key.server)
        }
        return true
    }

    /// The search list from the pod's resolv.conf as the file cache keeps it, if it does.
    private func keptSearchList() -> SearchList? {
        keptConfiguration().map { SearchList(resolverConfiguration: $0) }
    }

    /// The pod's resolv.conf as the file cache keeps it, if it does.
    private func keptConfiguration() -> String? {
        guard let file = files?.content(Self.resolverConfiguration)?.open() else { return nil }
        var text: [UInt8] = []
        while let piece = try? Sockets.read(file.raw, upTo: 4096), !piece.isEmpty { text += piece }
        return String(decoding: text, as: UTF8.self)
    }

    /// Before the program's first lookup: takes the search list from the kept resolv.conf, and returns its
    /// name servers (none when it is not kept yet: the first lookup then reads it).
    package func warmUp() -> [String] {
        guard let text = keptConfiguration() else { return [] }
        let list = SearchList(resolverConfiguration: text)
        state.withLock { $0.searchList = $0.searchList ?? list }
        return SearchList.nameServers(resolverConfiguration: text)
    }

    private func ask(_ questions: [DNSQuestion], server: [UInt8]) {
        client.send(.resolve(server: server, questions: questions)) { [self] reply in
            var answers: [DNSQuestion: [UInt8]] = [:]
            switch reply {
            case .response(.answers(let messages)):
                for message in messages {
                    if let question = DNSMessage.question(ofAnswer: message) { answers[question] = message }
                }
            case .response(.failure(let errno, let message)):
                logger.warning("the agent could not ask the pod's name server: \(message) (errno \(errno))")
            case .response, .chunk, .end:
                logger.warning("the agent answered a lookup with something else than its answers")
            case .linkFailure:
                break
            }
            settle(questions, server: server, answers: answers)
            return .complete
        }
    }

    /// Keeps what came and answers the queries that waited: SERVFAIL where no answer came (the server did not
    /// answer in time, or the link failed), so that the resolver moves on rather than wait for its timeout.
    private func settle(_ questions: [DNSQuestion], server: [UInt8], answers: [DNSQuestion: [UInt8]]) {
        let now = Clock.monotonic()
        let waiting = state.withLock { state in
            questions.flatMap { question -> [(Waiter, [UInt8]?)] in
                let key = AnswerCache.Key(server: server, question: question)
                let waiters = state.asked.removeValue(forKey: key) ?? []
                // Kept for the lookup's next queries, or for the TTL; a query that waited takes its own.
                if let answer = answers[question], waiters.isEmpty || DNSMessage.lifetime(answer) ?? 0 > 0 {
                    state.cache.store(answer, for: key, now: now)
                }
                return waiters.map { ($0, answers[question]) }
            }
        }
        for (waiter, answer) in waiting {
            waiter.reply(
                answer.map { DNSMessage.answer($0, to: waiter.query, age: 0, udp: waiter.udp) }
                    ?? DNSMessage.failure(.serverFailure, to: waiter.query))
        }
    }
}
