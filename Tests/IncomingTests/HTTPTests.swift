import Testing

@testable import Incoming

func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

@Test func parsesRequestHeads() throws {
    let text = "\r\nGET /api/items?id=1 HTTP/1.1\r\nHost: pod\r\nX-Dev:  me \r\n\r\nrest"
    let head = try #require(try HTTPHead.parse(bytes(text)[...]))
    #expect(head.length == text.utf8.count - 4)
    #expect(head.method == bytes("GET") && head.path == bytes("/api/items"))
    #expect(head.values(of: "x-dev") == ["me"])
    #expect(try head.requestBody() == .none)
    #expect(try HTTPHead.parse(bytes("GET / HTTP/1.1\r\nHost: pod\r\n")[...]) == nil)
    #expect(try HTTPHead.parse(bytes("GET / HTTP/1.1\nHost: x\n\n")[...])?.headerLines == [bytes("Host: x")])
    #expect(throws: HTTPFramingError.self) {
        try HTTPHead.parse([UInt8](repeating: UInt8(ascii: "a"), count: HTTPHead.maximumLength + 2)[...])
    }
}

@Test func framesBodies() throws {
    func head(_ text: String) throws -> HTTPHead { try #require(try HTTPHead.parse(bytes(text + "\r\n\r\n")[...])) }
    #expect(try head("POST / HTTP/1.1\r\nContent-Length: 5").requestBody() == .length(5))
    #expect(try head("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked").requestBody() == .chunked)
    #expect(throws: HTTPFramingError.self) { try head("POST / HTTP/1.1\r\nContent-Length: -1").requestBody() }
    #expect(throws: HTTPFramingError.self) { try head("POST / HTTP/1.1\r\nTransfer-Encoding: gzip").requestBody() }
    let ok = try head("HTTP/1.1 200 OK\r\nContent-Length: 3")
    #expect(ok.status == 200)
    #expect(try ok.responseBody(requestMethod: bytes("GET")) == .length(3))
    #expect(try ok.responseBody(requestMethod: bytes("HEAD")) == .none)
    #expect(
        try head("HTTP/1.1 304 Not Modified\r\nContent-Length: 3").responseBody(requestMethod: bytes("GET")) == .none)
    #expect(try head("HTTP/1.0 200 OK").responseBody(requestMethod: bytes("GET")) == .untilClose)
}

@Test func findsTheEndOfChunkedBodiesCutAnywhere() throws {
    let body = bytes("4;ext=1\r\nWiki\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\n")
    for cut in 0..<body.count {
        var reader = BodyReader(.chunked)
        let first = try reader.consume(body[..<cut])
        #expect(first == cut && !reader.isComplete)
        let second = try reader.consume(body[cut...] + bytes("GET"))
        #expect(cut + second == body.count && reader.isComplete)
    }
    var bad = BodyReader(.chunked)
    #expect(throws: HTTPFramingError.self) { try bad.consume(bytes("zz\r\n")[...]) }
    var long = BodyReader(.chunked)
    #expect(throws: HTTPFramingError.self) { try long.consume(bytes("1\r\nab\r\n")[...]) }
}

@Test func countsLengthBodies() throws {
    var reader = BodyReader(.length(5))
    #expect(try reader.consume(bytes("abc")[...]) == 3)
    #expect(try reader.consume(bytes("defGET")[...]) == 2)
    #expect(reader.isComplete)
    #expect(BodyReader(.none).isComplete && BodyReader(.length(0)).isComplete)
    var untilClose = BodyReader(.untilClose)
    #expect(try untilClose.consume(bytes("anything")[...]) == 8 && !untilClose.isComplete)
}

@Test func filtersOnHeaderLinesAndPaths() throws {
    #expect(try HTTPFilter(headerPattern: "", pathPattern: "") == nil)
    let header = try #require(try HTTPFilter(headerPattern: "^X-Dev: (me|you)$", pathPattern: ""))
    func head(_ text: String) -> HTTPFilter.Subject {
        HTTPFilter.Subject(try! HTTPHead.parse(bytes(text + "\r\n\r\n")[...])!)
    }
    #expect(header.matches(head("GET / HTTP/1.1\r\nHost: a\r\nX-Dev:   you")))
    #expect(header.matches(head("GET / HTTP/1.1\r\nX-Dev:\t me \t")))  // optional whitespace either side
    #expect(!header.matches(head("GET / HTTP/1.1\r\nX-Dev: \t ")))
    #expect(!header.matches(head("GET / HTTP/1.1\r\nHost: a\r\nX-Dev: them")))
    #expect(!header.matches(head("GET / HTTP/1.1\r\nx-dev: me")))  // as sent: case matters unless (?i)
    let both = try #require(try HTTPFilter(headerPattern: "(?i)^x-dev: me$", pathPattern: "^/api/"))
    #expect(both.matches(head("GET /api/x?q=/api/ HTTP/1.1\r\nx-dev: me")))
    #expect(!both.matches(head("GET /web/x?q=/api/ HTTP/1.1\r\nx-dev: me")))
    #expect(!both.matches(head("GET /api/x HTTP/1.1")))
    #expect(throws: HTTPFilterError.self) { try HTTPFilter(headerPattern: "(", pathPattern: "") }
}
