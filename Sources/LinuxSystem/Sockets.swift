import CSysmirror
import SyscallDecoding

#if canImport(Glibc)
    import Glibc
#endif

/// sysmirror's own socket calls, each through `systemCall`: a failure throws `SystemCallError` with the
/// call's name and errno. Addresses are `SocketAddress`; a new descriptor comes with its owner.
public enum Sockets {
    /// socket(2), close-on-exec.
    public static func make(family: Int32, type: Int32, protocol socketProtocol: Int32 = 0) throws(SystemCallError)
        -> OwnedDescriptor
    {
        OwnedDescriptor(
            taking: try systemCall("socket") {
                socket(family, type | Int32(SOCK_CLOEXEC.rawValue), socketProtocol)
            })
    }

    /// connect(2). A non-blocking socket throws EINPROGRESS while its handshake goes on.
    public static func connect(_ fd: Int32, to address: SocketAddress) throws(SystemCallError) {
        let bytes = address.bytes
        _ = try systemCall("connect") {
            bytes.withUnsafeBytes {
                Glibc.connect(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t($0.count))
            }
        }
    }

    /// Cuts the association of a connected socket (connect with AF_UNSPEC): a TCP connection is reset, both ways.
    public static func disconnect(_ fd: Int32) throws(SystemCallError) {
        try connect(fd, to: .other(family: UInt16(AF_UNSPEC)))
    }

    public static func bind(_ fd: Int32, to address: SocketAddress) throws(SystemCallError) {
        let bytes = address.bytes
        _ = try systemCall("bind") {
            bytes.withUnsafeBytes {
                Glibc.bind(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t($0.count))
            }
        }
    }

    public static func listen(_ fd: Int32, backlog: Int32) throws(SystemCallError) {
        _ = try systemCall("listen") { Glibc.listen(fd, backlog) }
    }

    /// accept4(2) with `flags` (SOCK_CLOEXEC is always added): the connection; `peer` is its peer's address.
    public static func accept(_ fd: Int32, flags: Int32 = 0, peer: inout SocketAddress?) throws(SystemCallError)
        -> OwnedDescriptor
    {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let connection = try systemCall("accept4") {
            withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sysm_accept4(fd, $0, &length, flags | Int32(SOCK_CLOEXEC.rawValue))
                }
            }
        }
        peer = address(of: storage, length: length)
        return OwnedDescriptor(taking: connection)
    }

    /// getsockname(2).
    public static func localAddress(_ fd: Int32) throws(SystemCallError) -> SocketAddress {
        try socketName("getsockname", fd, getsockname)
    }

    /// getpeername(2): throws ENOTCONN for a socket that is not connected.
    public static func peerAddress(_ fd: Int32) throws(SystemCallError) -> SocketAddress {
        try socketName("getpeername", fd, getpeername)
    }

    private static func socketName(
        _ name: String, _ fd: Int32,
        _ call: (Int32, UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> Int32
    ) throws(SystemCallError) -> SocketAddress {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = try systemCall(name) {
            withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { call(fd, $0, &length) }
            }
        }
        guard let address = address(of: storage, length: length) else { throw SystemCallError(name, .invalidArgument) }
        return address
    }

    private static func address(of storage: sockaddr_storage, length: socklen_t) -> SocketAddress? {
        var storage = storage
        return SocketAddress(withUnsafeBytes(of: &storage) { Array($0.prefix(Int(length))) })
    }

    /// The user id of the process at the other end of a unix socket, as it was when it connected or listened
    /// (SO_PEERCRED).
    public static func peerUser(_ fd: Int32) throws(SystemCallError) -> UInt32 {
        var credentials: (pid: Int32, uid: UInt32, gid: UInt32) = (0, 0, 0)
        var size = socklen_t(MemoryLayout.size(ofValue: credentials))
        _ = try systemCall("getsockopt(SO_PEERCRED)") { getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &size) }
        return credentials.uid
    }

    /// An integer option (getsockopt).
    public static func option(_ fd: Int32, level: Int32 = SOL_SOCKET, _ name: Int32) throws(SystemCallError) -> Int32 {
        var value: Int32 = 0
        var size = socklen_t(4)
        _ = try systemCall("getsockopt") { getsockopt(fd, level, name, &value, &size) }
        return value
    }

    /// A 64-bit SOL_SOCKET option: a socket's cookie (SO_COOKIE), its network namespace's (SO_NETNS_COOKIE).
    public static func option64(_ fd: Int32, _ name: Int32) throws(SystemCallError) -> UInt64 {
        var value: UInt64 = 0
        var size = socklen_t(8)
        _ = try systemCall("getsockopt") { getsockopt(fd, SOL_SOCKET, name, &value, &size) }
        return value
    }

    public static func setOption(_ fd: Int32, level: Int32 = SOL_SOCKET, _ name: Int32, _ value: Int32)
        throws(SystemCallError)
    {
        var value = value
        _ = try systemCall("setsockopt") { setsockopt(fd, level, name, &value, 4) }
    }

    /// TCP_NODELAY: small writes (requests, relayed pieces) go out at once.
    public static func setNoDelay(_ fd: Int32) throws(SystemCallError) {
        try setOption(fd, level: Int32(IPPROTO_TCP), TCP_NODELAY, 1)
    }

    /// SO_LINGER with a zero time: the next close resets the connection instead of ending it.
    public static func resetOnClose(_ fd: Int32) throws(SystemCallError) {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        _ = try systemCall("setsockopt(SO_LINGER)") {
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        }
    }

    /// shutdown(SHUT_WR): the peer reads the end of the stream; reading goes on.
    public static func shutdownOutput(_ fd: Int32) throws(SystemCallError) {
        _ = try systemCall("shutdown") { Glibc.shutdown(fd, Int32(SHUT_WR)) }
    }

    /// shutdown(SHUT_RDWR): on a listening socket, wakes a thread blocked in its accept (which then fails).
    public static func shutdownBoth(_ fd: Int32) throws(SystemCallError) {
        _ = try systemCall("shutdown") { Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
    }

    /// SO_RCVTIMEO: a blocking receive gives up after `seconds` (0: never).
    public static func setReceiveTimeout(_ fd: Int32, seconds: Int) throws(SystemCallError) {
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        _ = try systemCall("setsockopt(SO_RCVTIMEO)") {
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        }
    }

    /// bind(2) with a raw address of `length` bytes, for families SocketAddress does not name (netlink).
    public static func bind(_ fd: Int32, raw address: [UInt8]) throws(SystemCallError) {
        _ = try systemCall("bind") {
            address.withUnsafeBytes {
                Glibc.bind(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t($0.count))
            }
        }
    }

    /// The socket's pending error (SO_ERROR), which reading clears; 0 when none.
    public static func pendingError(_ fd: Int32) throws(SystemCallError) -> Int32 {
        try option(fd, SO_ERROR)
    }

    /// send(2) without SIGPIPE; the count sent. A full non-blocking socket throws EAGAIN.
    public static func send(_ fd: Int32, _ bytes: ArraySlice<UInt8>, flags: Int32 = 0) throws(SystemCallError) -> Int {
        try systemCall("send") {
            bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL) | flags) }
        }
    }

    /// sendto(2) of one datagram to `address`, without SIGPIPE; the count sent.
    public static func send(_ fd: Int32, _ bytes: ArraySlice<UInt8>, to address: SocketAddress, flags: Int32 = 0)
        throws(SystemCallError) -> Int
    {
        let name = address.bytes
        return try systemCall("sendto") {
            bytes.withUnsafeBytes { data in
                name.withUnsafeBytes {
                    sendto(
                        fd, data.baseAddress, data.count, Int32(MSG_NOSIGNAL) | flags,
                        $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t($0.count))
                }
            }
        }
    }

    /// recv(2) of up to `count` bytes: what came, empty at the end of the stream. An empty non-blocking
    /// socket (or MSG_DONTWAIT) throws EAGAIN.
    public static func receive(_ fd: Int32, upTo count: Int, flags: Int32 = 0) throws(SystemCallError) -> [UInt8] {
        try filling(count) { buffer throws(SystemCallError) in
            try systemCall("recv") { recv(fd, buffer.baseAddress, count, flags) }
        }
    }

    /// recv(2) into `buffer` from its start, as much as it holds: the count read, 0 at the end of the stream.
    /// For a caller that reads again and again into the same memory (a relay).
    /// recv(2) into `buffer` from `offset` to its end: how many bytes came (0 at the end).
    public static func receive(
        _ fd: Int32, into buffer: inout [UInt8], at offset: Int = 0, flags: Int32 = 0
    ) throws(SystemCallError) -> Int {
        try systemCall("recv") {
            buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + offset, $0.count - offset, flags) }
        }
    }

    /// recvmsg(2) of one datagram, up to `count` bytes and `controlCapacity` bytes of control messages: the
    /// datagram's length (its whole length with MSG_TRUNC in `flags`), its bytes, its sender, the control
    /// messages and the message's flags (MSG_TRUNC, MSG_CTRUNC).
    public static func receiveMessage(_ fd: Int32, upTo count: Int, controlCapacity: Int, flags: Int32 = 0)
        throws(SystemCallError) -> (length: Int, bytes: [UInt8], sender: SocketAddress?, control: [UInt8], flags: Int32)
    {
        var storage = sockaddr_storage()
        var control = [UInt8](repeating: 0, count: controlCapacity)
        var header = msghdr()
        var length = 0
        let bytes = try filling(count) { buffer throws(SystemCallError) in
            var piece = iovec(iov_base: UnsafeMutableRawPointer(buffer.baseAddress), iov_len: count)
            length = try systemCall("recvmsg") {
                withUnsafeMutablePointer(to: &storage) { name in
                    withUnsafeMutablePointer(to: &piece) { piece in
                        control.withUnsafeMutableBytes { control in
                            header.msg_name = UnsafeMutableRawPointer(name)
                            header.msg_namelen = socklen_t(MemoryLayout<sockaddr_storage>.size)
                            header.msg_iov = piece
                            header.msg_iovlen = 1
                            header.msg_control = controlCapacity > 0 ? control.baseAddress : nil
                            header.msg_controllen = controlCapacity
                            return recvmsg(fd, &header, flags)
                        }
                    }
                }
            }
            return min(length, count)
        }
        let sender = withUnsafeBytes(of: &storage) { SocketAddress(Array($0.prefix(Int(header.msg_namelen)))) }
        return (length, bytes, sender, Array(control.prefix(header.msg_controllen)), header.msg_flags)
    }

    /// read(2) of up to `count` bytes from any descriptor (a pipe, a file, inotify): what came, empty at the end.
    public static func read(_ fd: Int32, upTo count: Int) throws(SystemCallError) -> [UInt8] {
        try filling(count) { buffer throws(SystemCallError) in
            try systemCall("read") { Glibc.read(fd, buffer.baseAddress, count) }
        }
    }

    /// A new array of up to `count` bytes that `body` fills in place (no zeroing first: reads are on the
    /// serving loop's path).
    private static func filling(
        _ count: Int, _ body: (UnsafeMutableBufferPointer<UInt8>) throws(SystemCallError) -> Int
    ) throws(SystemCallError) -> [UInt8] {
        var failure: SystemCallError?
        let bytes = [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            do throws(SystemCallError) {
                initialized = try body(buffer)
            } catch {
                failure = error
                initialized = 0
            }
        }
        if let failure { throw failure }
        return bytes
    }

    /// sendmsg(2) with `descriptor` as SCM_RIGHTS (none when nil); the count sent.
    public static func send(_ fd: Int32, _ bytes: [UInt8], passing descriptor: Int32?) throws(SystemCallError) -> Int {
        try systemCall("sendmsg") { sysm_send_with_fd(fd, bytes, bytes.count, descriptor ?? -1) }
    }

    /// recvmsg(2) into `buffer`: the count read (0 at the end); a descriptor that came with the bytes goes
    /// to `descriptor`.
    public static func receive(
        _ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, descriptor: inout OwnedDescriptor?
    ) throws(SystemCallError) -> Int {
        var received: Int32 = -1
        defer { if received >= 0 { descriptor = OwnedDescriptor(taking: received) } }
        return try systemCall("recvmsg") { sysm_receive_with_fd(fd, buffer.baseAddress, buffer.count, &received) }
    }

    /// `receive(_:into:descriptor:)` on a socket with SO_PASSCRED: also the sender's user id.
    public static func receive(
        _ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, descriptor: inout OwnedDescriptor?,
        sender: inout UInt32
    ) throws(SystemCallError) -> Int {
        var received: Int32 = -1
        defer { if received >= 0 { descriptor = OwnedDescriptor(taking: received) } }
        return try systemCall("recvmsg") {
            sysm_receive_with_fd_from(fd, buffer.baseAddress, buffer.count, &received, &sender)
        }
    }
}
