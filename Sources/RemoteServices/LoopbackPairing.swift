import LinuxSystem
import SyscallDecoding
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Loopback listeners of sysmirror's, one per family, made on first use: a program's socket connected to
/// one becomes a plain TCP connection whose other end sysmirror holds, to relay it to a link connection
/// that speaks StreamFraming (a port-forward carries no half-close, so the program cannot hold the link
/// connection itself).
final class LoopbackPairing: @unchecked Sendable {  // `listeners` is touched only on the serving loop
    private var listeners: [Int32: (fd: SharedDescriptor, address: SocketAddress)] = [:]

    /// On the loop: connects the program's socket (`socket`, a descriptor of sysmirror's on it) to the
    /// listener of `family` and returns sysmirror's end of that connection.
    func connect(_ socket: Int32, family: Int32) throws(SystemCallError) -> SharedDescriptor {
        let listener = try self.listener(for: family)
        do {
            try Sockets.connect(socket, to: listener.address)
        } catch  where error.errno == .nowInProgress {
            // On loopback the handshake is over at once, or nearly.
            guard readiness(of: socket, for: Int16(POLLOUT), milliseconds: 1000) != 0 else {
                throw SystemCallError("connect(loopback)", .timedOut)
            }
            let pending = try Sockets.pendingError(socket)
            if pending != 0 { throw SystemCallError("connect(loopback)", Errno(rawValue: pending)) }
        }
        let local = try Sockets.localAddress(socket)
        // The loop makes one pair at a time: the connection the listener has is this one.
        _ = readiness(of: listener.fd.raw, for: Int16(POLLIN), milliseconds: 1000)
        var peer: SocketAddress?
        let ours = try Sockets.accept(
            listener.fd.raw, flags: Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), peer: &peer)
        guard peer?.port == local.port else { throw SystemCallError("accept(loopback)", .connectionAbort) }
        try Sockets.setNoDelay(ours.raw)
        return SharedDescriptor(ours)
    }

    private func listener(for family: Int32) throws(SystemCallError) -> (fd: SharedDescriptor, address: SocketAddress) {
        if let known = listeners[family] { return known }
        let fd = SharedDescriptor(
            try Sockets.make(
                family: family,
                type: Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)))
        try Sockets.bind(fd.raw, to: .loopback(family: family))
        try Sockets.listen(fd.raw, backlog: 128)
        let made = (fd, try Sockets.localAddress(fd.raw))
        listeners[family] = made
        return made
    }
}
