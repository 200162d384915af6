import Testing

@testable import NameResolution

/// Answers built the way a name server builds them: the question, then records whose names point back at it.
enum Answers {
    static func record(type: UInt16, ttl: UInt32, data: [UInt8]) -> [UInt8] {
        [0xC0, 12] + be16(type) + be16(1) + be32(ttl) + be16(UInt16(data.count)) + data
    }

    static func message(
        id: UInt16 = 7, code: UInt8 = 0, truncated: Bool = false, question: DNSQuestion, answers: [[UInt8]] = [],
        authority: [[UInt8]] = []
    ) -> [UInt8] {
        var bytes = be16(id) + [0x81 | (truncated ? 0x02 : 0), 0x80 | code] + be16(1) + be16(UInt16(answers.count))
        bytes += be16(UInt16(authority.count)) + be16(0)
        bytes += Array(DNSMessage.makeQuery(id: 0, question)[12...]).prefix(question.name.utf8.count + 2 + 4)
        for record in answers + authority { bytes += record }
        return bytes
    }

    /// An SOA record's data: two names (the root, for brevity), then serial, refresh, retry, expire, minimum.
    static func soa(ttl: UInt32, minimum: UInt32) -> [UInt8] {
        record(
            type: DNSMessage.typeSOA, ttl: ttl, data: [0, 0] + be32(1) + be32(2) + be32(3) + be32(4) + be32(minimum))
    }

    static func be16(_ value: UInt16) -> [UInt8] { [UInt8(value >> 8), UInt8(value & 0xFF)] }
    static func be32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> (24 - 8 * $0)) } }
}

@Suite struct DNSMessageTests {
    let web = DNSQuestion(name: "web.default.svc.cluster.local", type: DNSMessage.typeA)

    @Test func aQueryReadsBackWithItsNameTypeAndUDPLimit() throws {
        let bytes = DNSMessage.makeQuery(id: 0x1234, DNSQuestion(name: "Web.Default.SVC.cluster.local.", type: 28))
        let query = try #require(DNSMessage.query(bytes))
        #expect(query.id == 0x1234)
        #expect(query.question == DNSQuestion(name: "web.default.svc.cluster.local", type: 28))
        #expect(query.udpLimit == Int(DNSMessage.ednsPayload))
        #expect(query.nameBytes.first == 3 && query.nameBytes.last == 0)
    }

    @Test func aQueryWithoutEDNSTakes512BytesOverUDP() throws {
        var bytes = DNSMessage.makeQuery(id: 1, web)
        bytes[11] = 0  // no additional record
        bytes.removeLast(11)
        #expect(try #require(DNSMessage.query(bytes)).udpLimit == 512)
    }

    @Test func answersAndGarbageAreNotQueries() {
        #expect(DNSMessage.query(Answers.message(question: web)) == nil)
        #expect(DNSMessage.query([1, 2, 3]) == nil)
        #expect(DNSMessage.query(Array(DNSMessage.makeQuery(id: 1, web).prefix(20))) == nil)
    }

    @Test func aPositiveAnswerLivesForItsLeastTTL() {
        let answer = Answers.message(
            question: web,
            answers: [
                Answers.record(type: 1, ttl: 30, data: [10, 96, 0, 20]),
                Answers.record(type: 1, ttl: 5, data: [10, 96, 0, 21]),
            ])
        #expect(DNSMessage.lifetime(answer) == 5)
        #expect(DNSMessage.question(ofAnswer: answer) == web)
    }

    @Test func aNegativeAnswerLivesForItsSOAsNegativeTTL() {
        let missing = Answers.message(code: 3, question: web, authority: [Answers.soa(ttl: 60, minimum: 10)])
        #expect(DNSMessage.lifetime(missing) == 10)
        let noData = Answers.message(question: web, authority: [Answers.soa(ttl: 4, minimum: 30)])
        #expect(DNSMessage.lifetime(noData) == 4)
        #expect(DNSMessage.lifetime(Answers.message(code: 3, question: web)) == nil)  // no SOA: not kept
        #expect(DNSMessage.lifetime(Answers.message(code: 2, question: web)) == nil)  // SERVFAIL
        #expect(DNSMessage.lifetime(Answers.message(truncated: true, question: web)) == nil)
    }

    @Test func aKeptAnswerTakesTheQuerysIdNameCaseAndItsAge() throws {
        let stored = Answers.message(question: web, answers: [Answers.record(type: 1, ttl: 30, data: [10, 96, 0, 20])])
        let query = try #require(DNSMessage.query(DNSMessage.makeQuery(id: 0xBEEF, web)))
        var asked = query
        asked.nameBytes[1] = UInt8(ascii: "W")  // the program wrote "Web"
        let answer = DNSMessage.answer(stored, to: asked, age: 12, udp: true)
        #expect(answer[0] == 0xBE && answer[1] == 0xEF)
        #expect(answer[13] == UInt8(ascii: "W"))
        let record = try #require(DNSMessage.records(answer)?.first)
        #expect(record.ttl == 18)
        #expect(DNSMessage.answer(stored, to: asked, age: 99, udp: true).count == answer.count)
        let aged = DNSMessage.answer(stored, to: asked, age: 99, udp: true)
        #expect(DNSMessage.records(aged)?.first?.ttl == 0)
    }

    @Test func anAnswerTooLargeForUDPIsCutWithTC() throws {
        let records = (0..<60).map { Answers.record(type: 1, ttl: 30, data: [10, 96, 1, UInt8($0)]) }
        let stored = Answers.message(question: web, answers: records)
        var query = try #require(DNSMessage.query(DNSMessage.makeQuery(id: 9, web)))
        query.udpLimit = 512
        let cut = DNSMessage.answer(stored, to: query, age: 0, udp: true)
        #expect(cut.count < 512)
        #expect(DNSMessage.header(cut)?.truncated == true)
        #expect(DNSMessage.records(cut)?.isEmpty == true)
        #expect(DNSMessage.answer(stored, to: query, age: 0, udp: false) == [0, 9] + stored.dropFirst(2))
    }

    @Test func compressionPointersThatLoopDoNotHang() {
        var looping = Answers.message(question: web)
        looping += [0xC0, UInt8(looping.count)]  // points at itself
        looping[7] = 1
        #expect(DNSMessage.records(looping) == nil)
    }
}

@Suite struct SearchListTests {
    let pod = SearchList(
        resolverConfiguration:
            "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
    )

    @Test func aShortNamesFirstQueryBringsEveryCandidate() {
        #expect(
            pod.candidates(for: "web.default.svc.cluster.local") == [
                "web.default.svc.cluster.local", "web.svc.cluster.local", "web.cluster.local", "web",
            ])
    }

    @Test func aFullNamesFirstQueryBringsTheNameItself() {
        let candidates = pod.candidates(for: "web.default.svc.cluster.local.default.svc.cluster.local.")
        #expect(candidates.contains("web.default.svc.cluster.local"))
        #expect(candidates.count == 4)
    }

    @Test func aNameTriedBareFirstBringsItsExpansions() {
        #expect(
            pod.candidates(for: "example.com") == [
                "example.com", "example.com.default.svc.cluster.local", "example.com.svc.cluster.local",
                "example.com.cluster.local",
            ])
    }

    @Test func aAndAAAAGoTogether() {
        let questions = pod.questions(
            for: DNSQuestion(name: "web.default.svc.cluster.local", type: DNSMessage.typeAAAA))
        #expect(questions.count == 8)
        #expect(questions.first == DNSQuestion(name: "web.default.svc.cluster.local", type: DNSMessage.typeAAAA))
        #expect(SearchList(domains: []).questions(for: DNSQuestion(name: "x", type: 33)).count == 1)
    }

    @Test func theLastSearchOrDomainLineWins() {
        #expect(SearchList(resolverConfiguration: "search a.b\ndomain c.d\n").domains == ["c.d"])
        #expect(SearchList(resolverConfiguration: "# search x\nnameserver 1.1.1.1\n").domains == [])
    }

    @Test func nameServersInTheFilesOrder() {
        let text = "search a.b\nnameserver 10.96.0.10\n#nameserver 9.9.9.9\nnameserver\tfd00::10\nnameserver\n"
        #expect(SearchList.nameServers(resolverConfiguration: text) == ["10.96.0.10", "fd00::10"])
        #expect(SearchList.nameServers(resolverConfiguration: "") == [])
    }
}

@Suite struct AnswerCacheTests {
    let key = AnswerCache.Key(server: [2, 0, 0, 53], question: DNSQuestion(name: "web", type: 1))
    let second: UInt64 = 1_000_000_000

    @Test func anAnswerIsKeptForItsTTL() throws {
        var cache = AnswerCache()
        let answer = Answers.message(
            question: key.question, answers: [Answers.record(type: 1, ttl: 5, data: [1, 2, 3, 4])])
        cache.store(answer, for: key, now: 0)
        let taken = cache.take(key, now: 3 * second)
        #expect(taken?.age == 3)
        #expect(cache.take(key, now: 4 * second) != nil)
        #expect(cache.take(key, now: 5 * second) == nil)
    }

    @Test func aClockReadBeforeTheStoreTakesTheAnswerAtAgeZero() {
        var cache = AnswerCache()
        let answer = Answers.message(
            question: key.question, answers: [Answers.record(type: 1, ttl: 5, data: [1, 2, 3, 4])])
        cache.store(answer, for: key, now: 10 * second)
        #expect(cache.take(key, now: 10 * second - 1)?.age == 0)
    }

    @Test func aTTLZeroAnswerServesItsOwnLookupOnce() {
        var cache = AnswerCache()
        let answer = Answers.message(
            question: key.question, answers: [Answers.record(type: 1, ttl: 0, data: [1, 2, 3, 4])])
        cache.store(answer, for: key, now: 0)
        #expect(cache.take(key, now: second / 10) != nil)
        #expect(cache.take(key, now: second / 10) == nil)
        cache.store(answer, for: key, now: 0)
        #expect(cache.take(key, now: 3 * second) == nil)
    }

    @Test func theCacheStaysBounded() {
        var cache = AnswerCache()
        let answer = Answers.message(
            question: key.question, answers: [Answers.record(type: 1, ttl: 300, data: [1, 2, 3, 4])])
        for index in 0..<(AnswerCache.capacity + 10) {
            cache.store(
                answer, for: AnswerCache.Key(server: [], question: DNSQuestion(name: "n\(index)", type: 1)), now: 0)
        }
        #expect(cache.count <= AnswerCache.capacity)
    }
}
