/// Flow control for one relayed TCP connection multiplexed on a session's link (docs/protocol.md, "Relayed
/// connections"): each side may have at most `size` bytes sent that the other has not passed on yet, so a
/// program (or a pod's peer) that does not read holds up its own connection and nothing else on the link.
/// Each side keeps one window, for what it sends and what it receives; both ends use this same type, so they
/// always agree.
public struct StreamWindow: Sendable, Equatable {
    /// Bytes in flight each way: at 20 ms of round trip, 25 MB/s for one connection.
    public static let size = 512 << 10
    /// Passed-on bytes are granted back once this many have gathered: one `credit` frame per 128 KiB, and
    /// a sender that keeps up never waits for one.
    static let grantThreshold = size / 4

    /// Bytes this side may send before the peer grants more.
    public private(set) var sendable = size
    /// Bytes the peer may still send before this side grants more.
    private var receivable = size
    /// Bytes received and passed on that the peer has not been granted back yet.
    private var passedOn = 0

    public init() {}

    public enum Violation: Error, Equatable {
        /// The peer sent more than its window, or granted more than was ever sent to it.
        case overrun
    }

    /// This side sent `count` bytes (at most `sendable`).
    public mutating func sent(_ count: Int) {
        precondition(count <= sendable, "a stream sent past its window")
        sendable -= count
    }

    /// The peer granted `count` more bytes.
    public mutating func granted(_ count: Int) throws(Violation) {
        guard count >= 0, sendable + count <= Self.size else { throw .overrun }
        sendable += count
    }

    /// The peer sent `count` bytes.
    public mutating func received(_ count: Int) throws(Violation) {
        guard count <= receivable else { throw .overrun }
        receivable -= count
    }

    /// `count` received bytes were passed on (to the socket they were for); returns the credit to send the
    /// peer now, if it is time.
    public mutating func passOn(_ count: Int) -> UInt32? {
        passedOn += count
        guard passedOn >= Self.grantThreshold else { return nil }
        defer { passedOn = 0 }
        receivable += passedOn
        return UInt32(passedOn)
    }
}
