/// Puts one direction of a TCP connection back in order from copies of its segments, as the receiver's
/// stack does: retransmissions and overlaps are cut, segments that arrive early wait for the gap before them.
/// Copies can be lost (the kernel drops them when the reader falls behind); a gap that holds more than
/// `limit` bytes behind it is given up on.
public struct StreamReassembly: Sendable {
    /// The sequence number of the next byte to deliver.
    public private(set) var next: UInt32
    private var early: [UInt32: [UInt8]] = [:]
    private var earlyBytes = 0
    private var finalSequence: UInt32?
    public let limit: Int

    public struct Step: Equatable, Sendable {
        /// Bytes now in order, to pass on.
        public var bytes: [UInt8] = []
        /// Every byte up to the sender's FIN has been delivered.
        public var finished = false
        /// Too much waits behind a gap: the stream cannot be completed.
        public var lost = false
    }

    /// Starts after the SYN whose sequence number is `initialSequence`.
    public init(initialSequence: UInt32, limit: Int = 4 << 20) {
        next = initialSequence &+ 1
        self.limit = limit
    }

    /// `a` comes before `b` in sequence space (wrapping).
    static func precedes(_ a: UInt32, _ b: UInt32) -> Bool { Int32(bitPattern: a &- b) < 0 }

    public mutating func receive(sequence: UInt32, payload: [UInt8], fin: Bool) -> Step {
        var step = Step()
        if fin { finalSequence = sequence &+ UInt32(truncatingIfNeeded: payload.count) }
        if !payload.isEmpty {
            if Self.precedes(next, sequence) {
                if (early[sequence]?.count ?? -1) < payload.count {
                    earlyBytes += payload.count - (early[sequence]?.count ?? 0)
                    early[sequence] = payload
                }
                if earlyBytes > limit {
                    step.lost = true
                    return step
                }
            } else {
                take(sequence: sequence, payload: payload, into: &step.bytes)
                drainEarly(into: &step.bytes)
            }
        }
        step.finished = finalSequence == next
        return step
    }

    /// Appends what of the segment lies at or after `next`.
    private mutating func take(sequence: UInt32, payload: [UInt8], into bytes: inout [UInt8]) {
        let skip = Int(next &- sequence)
        guard skip < payload.count else { return }  // all of it was delivered before
        bytes.append(contentsOf: payload[skip...])
        next = next &+ UInt32(payload.count - skip)
    }

    private mutating func drainEarly(into bytes: inout [UInt8]) {
        while let sequence = early.keys.first(where: { !Self.precedes(next, $0) }) {
            let payload = early.removeValue(forKey: sequence)!
            earlyBytes -= payload.count
            take(sequence: sequence, payload: payload, into: &bytes)
        }
    }
}

/// The client-to-pod direction of every connection to the mirrored ports, from copies of their segments:
/// what the pod's application reads, in order, for each connection that began while the copy ran.
/// Connections already open when the copy began are not followed (their start is unknown).
public struct MirrorFlows: Sendable {
    public struct Key: Hashable, Sendable {
        public var client: Endpoint
        public var server: Endpoint
    }

    public enum Event: Equatable, Sendable {
        case opened(Key)
        case data(Key, [UInt8])
        /// The client ended its side (FIN), or reset the connection.
        case closed(Key)
        /// Copies were lost beyond repair; the copy of this connection ends here.
        case lost(Key)
    }

    private var flows: [Key: (stream: StreamReassembly, lastSeen: UInt64)] = [:]
    public let maximumFlows: Int

    public init(maximumFlows: Int = 4096) {
        self.maximumFlows = maximumFlows
    }

    public var count: Int { flows.count }

    /// `now` is any monotonic clock, for `expire`.
    public mutating func receive(_ segment: TCPSegment, now: UInt64) -> [Event] {
        let key = Key(client: segment.source, server: segment.destination)
        if segment.has(TCPSegment.syn) && !segment.has(TCPSegment.ack) {
            if let known = flows[key], known.stream.next == segment.sequence &+ 1 { return [] }  // a retransmitted SYN
            var events: [Event] = flows[key] != nil ? [.closed(key)] : []
            guard flows.count < maximumFlows || flows[key] != nil else { return events }
            flows[key] = (StreamReassembly(initialSequence: segment.sequence), now)
            events.append(.opened(key))
            return events
        }
        guard var flow = flows[key] else { return [] }
        if segment.has(TCPSegment.rst) {
            flows[key] = nil
            return [.closed(key)]
        }
        let step = flow.stream.receive(
            sequence: segment.sequence, payload: segment.payload, fin: segment.has(TCPSegment.fin))
        var events: [Event] = step.bytes.isEmpty ? [] : [.data(key, step.bytes)]
        if step.lost {
            flows[key] = nil
            events.append(.lost(key))
        } else if step.finished {
            flows[key] = nil
            events.append(.closed(key))
        } else {
            flow.lastSeen = now
            flows[key] = flow
        }
        return events
    }

    /// Gives up on every connection: copies were dropped, and any of them may have a hole.
    public mutating func loseAll() -> [Event] {
        defer { flows = [:] }
        return flows.keys.map { .lost($0) }
    }

    /// Ends connections not heard from since `before`.
    public mutating func expire(before: UInt64) -> [Event] {
        let stale = flows.filter { $0.value.lastSeen < before }.map(\.key)
        for key in stale { flows[key] = nil }
        return stale.map { .closed($0) }
    }
}
