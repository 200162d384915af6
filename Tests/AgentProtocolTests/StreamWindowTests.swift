import AgentProtocol
import Testing

@Suite("Stream windows")
struct StreamWindowTests {
    @Test("A sender may send a window's worth, then waits for the receiver's credit")
    func sendingWaitsForCredit() throws {
        var window = StreamWindow()
        window.sent(StreamWindow.size - 10)
        #expect(window.sendable == 10)
        window.sent(10)
        #expect(window.sendable == 0)
        try window.granted(128 << 10)
        #expect(window.sendable == 128 << 10)
    }

    @Test("A receiver grants what it passed on, in batches of a quarter window, never a byte it did not pass on")
    func creditIsBatched() throws {
        var window = StreamWindow()
        try window.received(200 << 10)
        #expect(window.passOn(100 << 10) == nil)
        #expect(window.passOn(28 << 10) == 128 << 10)
        #expect(window.passOn(72 << 10) == nil)
        // What was granted may come again: a full window after the grant, no more.
        try window.received((512 - 200 + 128) << 10)
        #expect(throws: StreamWindow.Violation.overrun) { try window.received(1) }
    }

    @Test("A peer that overruns the window, or grants more than was sent, breaks the protocol")
    func overruns() {
        var receiving = StreamWindow()
        #expect(throws: StreamWindow.Violation.overrun) { try receiving.received(StreamWindow.size + 1) }
        var sending = StreamWindow()
        #expect(throws: StreamWindow.Violation.overrun) { try sending.granted(1) }
        sending.sent(100)
        #expect(throws: StreamWindow.Violation.overrun) { try sending.granted(101) }
    }
}
