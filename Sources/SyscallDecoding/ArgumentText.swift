#if canImport(Glibc)
import Glibc
#endif

/// Arguments as strace shows them: quoted paths, flag names, socket addresses.
enum ArgumentText {
    static let atFdcwd: Int32 = -100

    static func list(_ call: DecodedSyscall) -> String {
        var parts: [String] = []
        for (index, (kind, value)) in zip(call.spec.arguments, call.values).enumerated() {
            if kind == .mode && !showsMode(call, modeIndex: index) { continue }
            parts.append(text(kind, value, in: call))
        }
        return parts.joined(separator: ", ")
    }

    /// open and openat take a mode only with O_CREAT or O_TMPFILE; creat always does.
    static func showsMode(_ call: DecodedSyscall, modeIndex: Int) -> Bool {
        guard modeIndex > 0, call.spec.arguments[modeIndex - 1] == .openFlags,
            case .integer(let flags) = call.values[modeIndex - 1]
        else { return true }
        return flags & 0o100 != 0 || flags & 0o20200000 == 0o20200000
    }

    static func text(_ kind: ArgumentKind, _ value: ArgumentValue, in call: DecodedSyscall) -> String {
        switch value {
        case .fault(_, let address):
            return pointer(address)
        case .string(let bytes):
            return quoted(bytes)
        case .strings(let strings, let truncated):
            return "[" + strings.map(quoted).joined(separator: ", ") + (truncated ? ", ..." : "") + "]"
        case .bytes(let bytes):
            return structure(kind, bytes)
        case .integer(let raw):
            return integer(kind, raw, syscall: call.spec.name)
        }
    }

    static func integer(_ kind: ArgumentKind, _ raw: UInt64, syscall: String) -> String {
        let signed = Int32(truncatingIfNeeded: raw)
        switch kind {
        case .fd: return String(signed)
        case .dirfd: return signed == atFdcwd ? "AT_FDCWD" : String(signed)
        case .openFlags: return Names.openFlags(raw & 0xffff_ffff)
        case .mode: return "0" + String(raw & 0o7777, radix: 8)
        case .accessMode: return Names.accessMode(raw & 0xffff_ffff)
        case .atFlags: return Names.atFlags(raw & 0xffff_ffff, syscall: syscall)
        case .statxMask: return Names.statxMask(raw & 0xffff_ffff)
        case .messageFlags: return Names.messageFlags(raw & 0xffff_ffff)
        case .pointer, .path, .openHow, .socketAddress, .messageHeader, .stringArray: return pointer(raw)
        case .integer: return String(Int64(bitPattern: raw))
        }
    }

    static func structure(_ kind: ArgumentKind, _ bytes: [UInt8]) -> String {
        switch kind {
        case .openHow:
            let flags = bytes.loadLittleEndian(UInt64.self, at: 0)
            let mode = bytes.loadLittleEndian(UInt64.self, at: 8)
            let resolve = bytes.loadLittleEndian(UInt64.self, at: 16)
            return "{flags=\(Names.openFlags(flags)), mode=0\(String(mode, radix: 8)), "
                + "resolve=\(Names.resolveFlags(resolve))}"
        case .messageHeader:
            return "{msg_name=\(address(bytes))}"
        default:
            return address(bytes)
        }
    }

    static func address(_ bytes: [UInt8]) -> String {
        SocketAddress(bytes)?.description ?? "{invalid address, \(bytes.count) bytes}"
    }

    static func pointer(_ raw: UInt64) -> String {
        raw == 0 ? "NULL" : "0x" + String(raw, radix: 16)
    }

    /// A C string in double quotes; bytes that are not printable ASCII as escapes, so nothing is lost.
    static func quoted(_ bytes: [UInt8]) -> String {
        var out = "\""
        for byte in bytes {
            switch byte {
            case UInt8(ascii: "\""): out += "\\\""
            case UInt8(ascii: "\\"): out += "\\\\"
            case UInt8(ascii: "\n"): out += "\\n"
            case UInt8(ascii: "\t"): out += "\\t"
            case 0x20..<0x7f: out.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                out += "\\x" + (byte < 0x10 ? "0" : "") + String(byte, radix: 16)
            }
        }
        return out + "\""
    }
}

/// The C library's text for an errno ("No such file or directory").
enum ErrnoText {
    static func message(_ errno: Int32) -> String {
        String(cString: strerror(errno))
    }
}
