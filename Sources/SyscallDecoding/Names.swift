/// Names for flag words and errno values, as strace and the C headers spell them (x86_64 values).
public enum Names {
    /// `O_RDONLY|O_CLOEXEC`. Composite flags (O_SYNC, O_TMPFILE) come first so that they win over their parts.
    public static func openFlags(_ value: UInt64) -> String {
        let accessModes = ["O_RDONLY", "O_WRONLY", "O_RDWR", "O_ACCMODE"]
        var names = [accessModes[Int(value & 3)]]
        names += flags(value & ~3, openFlagTable)
        return names.joined(separator: "|")
    }

    public static func accessMode(_ value: UInt64) -> String {
        value == 0 ? "F_OK" : joined(flags(value, [(4, "R_OK"), (2, "W_OK"), (1, "X_OK")]))
    }

    public static func atFlags(_ value: UInt64, syscall: String) -> String {
        // faccessat2 gives 0x200 its own meaning.
        let table = syscall == "faccessat2" ? [(UInt64(0x200), "AT_EACCESS")] + atFlagTable : atFlagTable
        return joined(flags(value, table))
    }

    public static func statxMask(_ value: UInt64) -> String {
        joined(flags(value, statxTable))
    }

    public static func messageFlags(_ value: UInt64) -> String {
        joined(flags(value, messageFlagTable))
    }

    public static func resolveFlags(_ value: UInt64) -> String {
        joined(flags(value, resolveTable))
    }

    /// `ENOENT`, or the number for an errno without a name here.
    public static func errno(_ value: Int32) -> String {
        errnoNames[value] ?? "E\(value)"
    }

    /// The names of the bits set in `value`, with any bits left over in hex.
    static func flags(_ value: UInt64, _ table: [(UInt64, String)]) -> [String] {
        var rest = value
        var names: [String] = []
        for (bits, name) in table where rest & bits == bits && bits != 0 {
            names.append(name)
            rest &= ~bits
        }
        if rest != 0 { names.append("0x" + String(rest, radix: 16)) }
        return names
    }

    static func joined(_ names: [String]) -> String {
        names.isEmpty ? "0" : names.joined(separator: "|")
    }

    static let openFlagTable: [(UInt64, String)] = [
        (0o20200000, "O_TMPFILE"), (0o4010000, "O_SYNC"), (0o100, "O_CREAT"), (0o200, "O_EXCL"),
        (0o400, "O_NOCTTY"), (0o1000, "O_TRUNC"), (0o2000, "O_APPEND"), (0o4000, "O_NONBLOCK"),
        (0o10000, "O_DSYNC"), (0o20000, "O_ASYNC"), (0o40000, "O_DIRECT"), (0o100000, "O_LARGEFILE"),
        (0o200000, "O_DIRECTORY"), (0o400000, "O_NOFOLLOW"), (0o1000000, "O_NOATIME"),
        (0o2000000, "O_CLOEXEC"), (0o10000000, "O_PATH"),
    ]

    static let atFlagTable: [(UInt64, String)] = [
        (0x100, "AT_SYMLINK_NOFOLLOW"), (0x200, "AT_REMOVEDIR"), (0x400, "AT_SYMLINK_FOLLOW"),
        (0x800, "AT_NO_AUTOMOUNT"), (0x1000, "AT_EMPTY_PATH"), (0x2000, "AT_STATX_FORCE_SYNC"),
        (0x4000, "AT_STATX_DONT_SYNC"), (0x8000, "AT_RECURSIVE"),
    ]

    static let statxTable: [(UInt64, String)] = [
        (0xfff, "STATX_ALL"), (0x7ff, "STATX_BASIC_STATS"), (0x1, "STATX_TYPE"), (0x2, "STATX_MODE"),
        (0x4, "STATX_NLINK"), (0x8, "STATX_UID"), (0x10, "STATX_GID"), (0x20, "STATX_ATIME"),
        (0x40, "STATX_MTIME"), (0x80, "STATX_CTIME"), (0x100, "STATX_INO"), (0x200, "STATX_SIZE"),
        (0x400, "STATX_BLOCKS"), (0x800, "STATX_BTIME"), (0x1000, "STATX_MNT_ID"), (0x2000, "STATX_DIOALIGN"),
    ]

    static let messageFlagTable: [(UInt64, String)] = [
        (0x1, "MSG_OOB"), (0x2, "MSG_PEEK"), (0x4, "MSG_DONTROUTE"), (0x8, "MSG_CTRUNC"), (0x10, "MSG_PROXY"),
        (0x20, "MSG_TRUNC"), (0x40, "MSG_DONTWAIT"), (0x80, "MSG_EOR"), (0x100, "MSG_WAITALL"),
        (0x200, "MSG_FIN"), (0x400, "MSG_SYN"), (0x800, "MSG_CONFIRM"), (0x1000, "MSG_RST"),
        (0x2000, "MSG_ERRQUEUE"), (0x4000, "MSG_NOSIGNAL"), (0x8000, "MSG_MORE"), (0x10000, "MSG_WAITFORONE"),
        (0x40000, "MSG_BATCH"), (0x4000000, "MSG_ZEROCOPY"), (0x20000000, "MSG_FASTOPEN"),
        (0x40000000, "MSG_CMSG_CLOEXEC"),
    ]

    static let resolveTable: [(UInt64, String)] = [
        (0x1, "RESOLVE_NO_XDEV"), (0x2, "RESOLVE_NO_MAGICLINKS"), (0x4, "RESOLVE_NO_SYMLINKS"),
        (0x8, "RESOLVE_BENEATH"), (0x10, "RESOLVE_IN_ROOT"), (0x20, "RESOLVE_CACHED"),
    ]

    static let errnoNames: [Int32: String] = [
        1: "EPERM", 2: "ENOENT", 3: "ESRCH", 4: "EINTR", 5: "EIO", 6: "ENXIO", 7: "E2BIG", 8: "ENOEXEC",
        9: "EBADF", 10: "ECHILD", 11: "EAGAIN", 12: "ENOMEM", 13: "EACCES", 14: "EFAULT", 15: "ENOTBLK",
        16: "EBUSY", 17: "EEXIST", 18: "EXDEV", 19: "ENODEV", 20: "ENOTDIR", 21: "EISDIR", 22: "EINVAL",
        23: "ENFILE", 24: "EMFILE", 25: "ENOTTY", 26: "ETXTBSY", 27: "EFBIG", 28: "ENOSPC", 29: "ESPIPE",
        30: "EROFS", 31: "EMLINK", 32: "EPIPE", 33: "EDOM", 34: "ERANGE", 35: "EDEADLK", 36: "ENAMETOOLONG",
        37: "ENOLCK", 38: "ENOSYS", 39: "ENOTEMPTY", 40: "ELOOP", 42: "ENOMSG", 61: "ENODATA", 62: "ETIME",
        71: "EPROTO", 75: "EOVERFLOW", 84: "EILSEQ", 88: "ENOTSOCK", 89: "EDESTADDRREQ", 90: "EMSGSIZE",
        91: "EPROTOTYPE", 92: "ENOPROTOOPT", 93: "EPROTONOSUPPORT", 94: "ESOCKTNOSUPPORT", 95: "EOPNOTSUPP",
        96: "EPFNOSUPPORT", 97: "EAFNOSUPPORT", 98: "EADDRINUSE", 99: "EADDRNOTAVAIL", 100: "ENETDOWN",
        101: "ENETUNREACH", 102: "ENETRESET", 103: "ECONNABORTED", 104: "ECONNRESET", 105: "ENOBUFS",
        106: "EISCONN", 107: "ENOTCONN", 108: "ESHUTDOWN", 110: "ETIMEDOUT", 111: "ECONNREFUSED",
        112: "EHOSTDOWN", 113: "EHOSTUNREACH", 114: "EALREADY", 115: "EINPROGRESS", 116: "ESTALE",
        122: "EDQUOT", 125: "ECANCELED",
    ]
}
