#if canImport(Glibc)
    import Glibc
#endif

/// Arguments as strace shows them: quoted paths, flag names, socket addresses.
enum ArgumentText {
    static let atFdcwd: Int32 = -100

    static func appendList(_ call: DecodedSyscall, to out: inout LineBuffer) {
        var first = true
        for (index, (kind, value)) in zip(call.spec.arguments, call.values).enumerated() {
            if kind == .mode && !showsMode(call, modeIndex: index) { continue }
            if !first { out.append(", ") }
            first = false
            append(kind, value, in: call, to: &out)
        }
    }

    /// open and openat take a mode only with O_CREAT or O_TMPFILE; creat always does.
    static func showsMode(_ call: DecodedSyscall, modeIndex: Int) -> Bool {
        guard modeIndex > 0, call.spec.arguments[modeIndex - 1] == .openFlags,
            case .integer(let flags) = call.values[modeIndex - 1]
        else { return true }
        return flags & 0o100 != 0 || flags & 0o20200000 == 0o20200000
    }

    static func append(_ kind: ArgumentKind, _ value: ArgumentValue, in call: DecodedSyscall, to out: inout LineBuffer)
    {
        switch value {
        case .fault(_, let address):
            out.append(pointer: address)
        case .string(let bytes):
            appendQuoted(bytes, to: &out)
        case .strings(let strings, let truncated):
            out.append("[")
            for (index, string) in strings.enumerated() {
                if index > 0 { out.append(", ") }
                appendQuoted(string, to: &out)
            }
            if truncated { out.append(strings.isEmpty ? "..." : ", ...") }
            out.append("]")
        case .bytes(let bytes):
            appendStructure(kind, bytes, to: &out)
        case .integer(let raw):
            appendInteger(kind, raw, syscall: call.spec.name, to: &out)
        }
    }

    static func appendInteger(_ kind: ArgumentKind, _ raw: UInt64, syscall: String, to out: inout LineBuffer) {
        let signed = Int32(truncatingIfNeeded: raw)
        let low = raw & 0xffff_ffff
        switch kind {
        case .fd: out.append(decimal: Int64(signed))
        case .dirfd: signed == atFdcwd ? out.append("AT_FDCWD") : out.append(decimal: Int64(signed))
        case .openFlags: out.append(Names.openFlags(low))
        case .mode:
            out.append("0")
            out.append(unsigned: raw & 0o7777, radix: 8)
        case .accessMode: out.append(Names.accessMode(low))
        case .atFlags: out.append(Names.atFlags(low, syscall: syscall))
        case .statxMask: out.append(Names.statxMask(low))
        case .messageFlags: out.append(Names.messageFlags(low))
        case .pointer, .addressBuffer, .path, .name, .openHow, .socketAddress, .messageHeader, .stringArray:
            out.append(pointer: raw)
        case .integer: out.append(decimal: Int64(bitPattern: raw))
        }
    }

    static func appendStructure(_ kind: ArgumentKind, _ bytes: [UInt8], to out: inout LineBuffer) {
        switch kind {
        case .openHow:
            out.append("{flags=")
            out.append(Names.openFlags(bytes.loadLittleEndian(UInt64.self, at: 0)))
            out.append(", mode=0")
            out.append(unsigned: bytes.loadLittleEndian(UInt64.self, at: 8), radix: 8)
            out.append(", resolve=")
            out.append(Names.resolveFlags(bytes.loadLittleEndian(UInt64.self, at: 16)))
            out.append("}")
        case .messageHeader:
            out.append("{msg_name=")
            appendAddress(bytes, to: &out)
            out.append("}")
        default:
            appendAddress(bytes, to: &out)
        }
    }

    static func appendAddress(_ bytes: [UInt8], to out: inout LineBuffer) {
        if let address = SocketAddress(bytes) {
            out.append(address.description)
        } else {
            out.append("{invalid address, ")
            out.append(unsigned: UInt64(bytes.count))
            out.append(" bytes}")
        }
    }

    /// A C string in double quotes; bytes that are not printable ASCII as escapes, so nothing is lost.
    static func appendQuoted(_ bytes: [UInt8], to out: inout LineBuffer) {
        out.append("\"")
        defer { out.append("\"") }
        // Most paths need no escape: copy them whole.
        if bytes.allSatisfy({ $0 >= 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "\"") && $0 != UInt8(ascii: "\\") }) {
            return out.append(bytes: bytes)
        }
        for byte in bytes {
            switch byte {
            case UInt8(ascii: "\""): out.append("\\\"")
            case UInt8(ascii: "\\"): out.append("\\\\")
            case UInt8(ascii: "\n"): out.append("\\n")
            case UInt8(ascii: "\t"): out.append("\\t")
            case 0x20..<0x7f: out.append(byte: byte)
            default:
                out.append("\\x")
                if byte < 0x10 { out.append("0") }
                out.append(unsigned: UInt64(byte), radix: 16)
            }
        }
    }
}

/// The C library's text for an errno ("No such file or directory").
enum ErrnoText {
    static func message(_ errno: Int32) -> String {
        String(cString: strerror(errno))
    }
}
