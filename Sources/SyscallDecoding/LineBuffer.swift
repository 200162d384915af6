/// An output buffer the log formats append bytes to: no intermediate Strings, one buffer reused per batch.
public struct LineBuffer: Sendable {
    public private(set) var bytes: [UInt8] = []

    public init(capacity: Int = 0) {
        bytes.reserveCapacity(capacity)
    }

    public mutating func removeAll() {
        bytes.removeAll(keepingCapacity: true)
    }

    public mutating func append(_ text: StaticString) {
        text.withUTF8Buffer { bytes.append(contentsOf: $0) }
    }

    public mutating func append(_ text: String) {
        bytes.append(contentsOf: text.utf8)
    }

    public mutating func append(bytes more: some Collection<UInt8>) {
        bytes.append(contentsOf: more)
    }

    public mutating func append(byte: UInt8) {
        bytes.append(byte)
    }

    public mutating func append(decimal value: Int64) {
        if value < 0 {
            bytes.append(UInt8(ascii: "-"))
            append(unsigned: value.magnitude, radix: 10)
        } else {
            append(unsigned: UInt64(value), radix: 10)
        }
    }

    /// Digits of `value` in `radix` (at most 16), without a prefix.
    public mutating func append(unsigned value: UInt64, radix: UInt64 = 10) {
        let digits: StaticString = "0123456789abcdef"
        var scratch: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)
        withUnsafeMutableBytes(of: &scratch) { buffer in
            var index = buffer.count
            var rest = value
            repeat {
                index -= 1
                buffer[index] = digits.utf8Start[Int(rest % radix)]
                rest /= radix
            } while rest != 0
            bytes.append(contentsOf: buffer[index...])
        }
    }

    /// `0x1f`, or `NULL` for zero, as strace shows pointers.
    public mutating func append(pointer value: UInt64) {
        if value == 0 { return append("NULL") }
        append("0x")
        append(unsigned: value, radix: 16)
    }
}
