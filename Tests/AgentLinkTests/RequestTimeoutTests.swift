import AgentProtocol
import Logging
import Testing

@testable import AgentLink

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Requests that hear nothing")
struct RequestTimeoutTests {
    /// A client on one end of a socket pair, as the link's reader thread sees it; nothing is sent.
    func client() -> (AgentClient, [Int32]) {
        var ends: [Int32] = [-1, -1, -1, -1]
        _ = socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends)
        _ = ends.withUnsafeMutableBufferPointer { pipe($0.baseAddress! + 2) }  // the wake-up, never used here
        let client = AgentClient(
            address: .unix(path: "/nowhere"), agentDescription: "test", socket: ends[0], wakeUp: ends[3],
            resumption: nil, logger: Logger(label: "test"))
        return (client, ends)
    }

    @Test("A request made after the reader read its clock is not expired, and does not trap")
    func youngerThanTheClock() {
        let (client, ends) = client()
        defer { for end in ends { close(end) } }
        let answer = client.expect(id: 1)
        client.expireRequests(now: 1)  // long before the request was made
        client.expireRequests(now: UInt64.max / 2)  // long after
        if case .failure(let failure) = answer() {
            #expect(failure.description.contains("did not answer within"))
        } else {
            Issue.record("the request was not expired")
        }
    }
}
