/// How an open is served, from its flags alone; both ends decide with this, so they always agree.
public enum OpenIntent: Sendable, Equatable {
    /// O_RDONLY without O_CREAT: the agent streams the content; the program reads a local copy.
    case read
    /// O_WRONLY with O_TRUNC or O_APPEND: writes are sequential from a known point, so they stream to the
    /// pod as they come (the program writes into a pipe).
    case stream
    /// Everything else that may write (O_RDWR, O_WRONLY writing in place, O_CREAT): the agent opens the file
    /// read-write (creating or truncating it as asked) and streams its content; the program works on a
    /// local copy, written back to the pod when it closes it.
    case readWrite

    static let accessModeMask: Int32 = 0o3, writeOnly: Int32 = 0o1
    static let create: Int32 = 0o100, truncate: Int32 = 0o1000, append: Int32 = 0o2000

    public init(flags: Int32) {
        let accessMode = flags & Self.accessModeMask
        if accessMode == 0 && flags & Self.create == 0 {
            self = .read
        } else if accessMode == Self.writeOnly && flags & (Self.truncate | Self.append) != 0 {
            self = .stream
        } else {
            self = .readWrite
        }
    }

    /// Whether the program's descriptor can write, so that closing it writes the copy back.
    public static func writesBack(_ flags: Int32) -> Bool { flags & accessModeMask != 0 }
}
