import SystemPackage

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A failed system call: which call, and the errno it returned.
public struct SystemCallError: Error, Equatable, CustomStringConvertible {
    /// The call as a reader of the log would name it, for example `ioctl(SECCOMP_IOCTL_NOTIF_RECV)`.
    public let call: String
    public let errno: Errno

    public init(_ call: String, _ errno: Errno) {
        self.call = call
        self.errno = errno
    }

    public var description: String { "\(call): \(errno)" }
}

/// Reads errno right after the call; `@inline(never)` so nothing in between can clobber it.
@inline(never)
public func currentErrno() -> Errno { Errno(rawValue: Glibc.errno) }

/// The one choke point for sysmirror's own syscalls: runs `body`, and when it returns -1 throws the errno
/// with the call's name. Retries EINTR unless told not to (a blocking receive wants to see it).
@inlinable
public func systemCall<Result: FixedWidthInteger>(
    _ call: @autoclosure () -> String,
    retryOnInterrupt: Bool = true,
    _ body: () -> Result
) throws(SystemCallError) -> Result {
    while true {
        let result = body()
        if result != -1 { return result }
        let errno = currentErrno()
        if retryOnInterrupt && errno == .interrupted { continue }
        throw SystemCallError(call(), errno)
    }
}
