/// Kernel constants that Glibc declares only under _GNU_SOURCE, which Swift's Glibc module is built without.
/// The values are the kernel's x86_64 ABI.
public enum GNU {
    /// O_PATH: an fd that names a file without opening it (no read, no side effects of open).
    public static let openPath: Int32 = 0o10000000
    /// AT_EMPTY_PATH: the *at call acts on the dirfd itself.
    public static let emptyPath: Int32 = 0x1000
    /// O_TMPFILE: an unnamed file in a directory's file system, freed on its last close.
    public static let temporaryFile: Int32 = 0o20200000
    /// CLONE_NEWUTS, for setns into a UTS namespace.
    public static let newUTSNamespace: Int32 = 0x0400_0000
    /// CLONE_NEWNET, for setns into a network namespace.
    public static let newNetworkNamespace: Int32 = 0x4000_0000
}
