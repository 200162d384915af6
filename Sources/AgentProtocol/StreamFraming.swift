/// What a link connection carries once a `connect` or `take incoming` is answered `done`: the TCP
/// connection's bytes in pieces, and its ends of input as pieces of their own. A half-close must travel
/// inside the stream: a port-forward (the kubelet's) does not carry one, and closes both directions about a
/// second after either side ends. Each piece is a kind byte and a 32-bit big-endian length, then that many
/// bytes: data (its length > 0), or the end of the sender's input (length 0). A connection that closes
/// before its sender's end came was cut (a reset, a lost link).
public enum StreamFraming {
    /// The header's size: the kind and the length.
    public static let headerSize = 5
    static let data: UInt8 = 0
    static let endOfInput: UInt8 = 1

    /// The header of a data piece of `count` bytes (1 ... UInt32.max).
    public static func dataHeader(count: Int) -> [UInt8] {
        [
            data, UInt8(truncatingIfNeeded: count >> 24), UInt8(truncatingIfNeeded: count >> 16),
            UInt8(truncatingIfNeeded: count >> 8), UInt8(truncatingIfNeeded: count),
        ]
    }

    /// Writes a data header for `count` bytes at `offset`.
    public static func writeDataHeader(count: Int, into buffer: inout [UInt8], at offset: Int = 0) {
        for (index, byte) in dataHeader(count: count).enumerated() { buffer[offset + index] = byte }
    }

    /// The piece that ends the sender's input.
    public static let end: [UInt8] = [endOfInput, 0, 0, 0, 0]

    /// Takes a stream's bytes as they arrive, in any cut, and gives back its data and its end.
    public struct Reader: Sendable {
        private var header: [UInt8] = []
        private var remaining = 0
        public private(set) var ended = false

        public init() {}

        public enum Failure: Error, Equatable {
            /// An unknown kind, an end with a length, or bytes after the end.
            case malformed
        }

        /// Moves the data of `buffer[0..<count]` to its front, in order, and returns how many bytes of data
        /// that is; `ended` says whether the sender's end came. The headers are dropped in place, so a
        /// reader allocates nothing.
        public mutating func extract(_ buffer: inout [UInt8], count: Int) throws(Failure) -> Int {
            var read = 0
            var written = 0
            while read < count {
                if ended { throw .malformed }
                if remaining > 0 {
                    let take = min(remaining, count - read)
                    if written != read {
                        for index in 0..<take { buffer[written + index] = buffer[read + index] }
                    }
                    written += take
                    read += take
                    remaining -= take
                    continue
                }
                header.append(buffer[read])
                read += 1
                guard header.count == StreamFraming.headerSize else { continue }
                let length = header[1...].reduce(0) { $0 << 8 | Int($1) }
                switch header[0] {
                case StreamFraming.data where length > 0: remaining = length
                case StreamFraming.endOfInput where length == 0: ended = true
                default: throw .malformed
                }
                header = []
            }
            return written
        }
    }
}
