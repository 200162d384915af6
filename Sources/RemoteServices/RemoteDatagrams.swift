import AgentLink
import AgentProtocol
import LinuxSystem
import Logging
import Routing
import Synchronization
import SyscallDecoding
import SystemPackage
import UserNotification

#if canImport(Glibc)
    import Glibc
#endif

/// UDP where the agent is reached through a port-forward, which cannot pass sockets: each program socket
/// that sends to the pod gets a UDP socket in the pod (a `datagrams` request, its datagrams travelling as
/// chunks on the session's link, so a request and its answer cost one round trip), and stays the program's
/// own socket here.
///
/// Each pod peer is stood for by one relay socket of sysmirror's on loopback (per address family), shared by
/// every program socket that talks to that peer: a connected program socket is connected to its peer's
/// relay, so its send, write, recv and read run natively with no interception; what the pod answers comes to
/// it from that relay. Resolvers make a socket per query (glibc one per search-list candidate), so relays
/// are per peer, not per program socket: a lookup storm makes no descriptors, only flows, which the sweep
/// drops once their sockets are gone. recvfrom
/// with an address and recvmsg are routed (in such sessions only), so that the program learns the pod
/// peer's address, not the relay's, as glibc's and musl's resolvers, Go's ReadMsgUDP and libuv check.
/// sendmsg to a pod address is served as sendto is. Datagrams to port 53 go to `PodNames` instead.
package final class RemoteDatagrams: @unchecked Sendable {  // `flows` is touched only on `loop`; `senders` is locked
    /// A program socket, by its local address's family and port.
    struct FlowKey: Hashable, Sendable {
        let family: Int32
        let port: UInt16
    }

    let client: AgentClient
    let names: PodNames
    let loop: EventLoop
    let listener: NotificationListener
    let logger: Logger
    /// A relay, by the program sockets' family and the pod peer it stands for.
    struct RelayKey: Hashable, Sendable {
        let family: Int32
        let peer: [UInt8]
    }

    private var flows: [FlowKey: DatagramFlow] = [:]
    /// Made on the loop, read on the receiving thread too (a connect to a peer that has a relay is served
    /// there, with no hop to the loop).
    private let relays = Mutex<[RelayKey: PeerRelay]>([:])
    /// For the receiving thread's recvfrom: per program socket, each relay's port and the pod peer it stands for.
    private let senders = Mutex<[FlowKey: [UInt16: SocketAddress]]>([:])
    private var sweep: EventLoop.Timer?
    /// How often program sockets are looked for among the machine's UDP sockets, and their flows dropped once
    /// gone; more often while many are relayed (a program that resolves names in a loop makes one per query).
    static let sweepInterval: UInt64 = 30_000_000_000, busySweepInterval: UInt64 = 1_000_000_000
    static let busyFlows = 64

    package init(client: AgentClient, names: PodNames, loop: EventLoop, listener: NotificationListener, logger: Logger)
    {
        self.client = client
        self.names = names
        self.loop = loop
        self.listener = listener
        self.logger = logger
        // The pod's name servers get their relays while the program starts, so that its first lookup's
        // connect is served on the receiving thread at once.
        loop.execute { [self] in
            for server in names.warmUp() {
                guard let bytes = OutgoingRule.address(server) else { continue }
                let address: SocketAddress =
                    bytes.count == 4 ? .inet(address: bytes, port: 53) : .inet6(address: bytes, port: 53, scope: 0)
                _ = try? relay(for: address, family: address.family)
            }
        }
    }

    // MARK: connect, sendto and sendmsg

    /// Serves connect, sendto or sendmsg of a UDP socket to `destination` in the pod: connect connects the
    /// program's socket to the peer's relay; sendto and sendmsg send the program's bytes from here (its socket
    /// is bound first, as the kernel would bind it).
    func serve(
        _ notification: Notification, call: DecodedSyscall, socket: ProgramSocket, destination: SocketAddress,
        _ answer: PendingCall
    ) {
        let payload: [UInt8]?
        let memory = ProcessMemory(pid: notification.pid)
        switch call.spec.call {
        case .connect: payload = nil
        case .sendto:
            let count = min(Int(truncatingIfNeeded: notification.arguments[2]), Self.largestDatagram)
            guard let bytes = try? memory.readable(at: notification.arguments[1], count: count) else {
                return answer.fail(EFAULT)
            }
            payload = bytes
        case .sendmsg:
            switch Self.gathered(memory, header: notification.arguments[1]) {
            case .success(let bytes): payload = bytes
            case .failure(let errno): return answer.fail(errno.rawValue)
            }
        default:
            return answer.fail(EOPNOTSUPP)
        }
        let key = RelayKey(family: socket.facts.family, peer: destination.bytes)
        if payload == nil, let relay = relays.withLock({ $0[key] }) {
            // A connect to a peer with a relay: served here (a resolver's socket per query costs no hop).
            do throws(SystemCallError) {
                try connect(socket, to: relay)
                return answer.succeed(0, note: "through \(client.address)")
            } catch {
                return answer.fail(error.errno.rawValue, note: "could not relay the program's UDP socket: \(error)")
            }
        }
        loop.execute { [self] in
            guard listener.isPending(notification.id) else { return answer.gone() }
            do throws(SystemCallError) {
                let relay = try relay(for: destination, family: socket.facts.family)
                if let payload {
                    let flow = try flow(for: socket)
                    note(relay, sendingTo: flow.key)
                    deliver(payload, on: flow, to: relay)
                    answer.succeed(Int64(payload.count), note: "through \(client.address)")
                } else {
                    try connect(socket, to: relay)
                    answer.succeed(0, note: "through \(client.address)")
                }
            } catch {
                answer.fail(error.errno.rawValue, note: "could not relay the program's UDP socket: \(error)")
            }
        }
    }

    /// Connects the program's socket to `relay` (bound first, as the flows know it by its port), and notes
    /// the relay as its sender for recvfrom.
    private func connect(_ socket: ProgramSocket, to relay: PeerRelay) throws(SystemCallError) {
        let local = try bound(socket)
        try Sockets.connect(socket.fd.raw, to: relay.address)
        note(relay, sendingTo: FlowKey(family: socket.facts.family, port: local.port ?? 0))
    }

    /// Notes that `relay` sends to the program socket of `key`, for its recvfrom to name the relay's peer.
    private func note(_ relay: PeerRelay, sendingTo key: FlowKey) {
        senders.withLock { $0[key, default: [:]][relay.port] = relay.peer }
    }

    /// The program socket's address, after binding it to an ephemeral port if it had none.
    private func bound(_ socket: ProgramSocket) throws(SystemCallError) -> SocketAddress {
        let local = try Sockets.localAddress(socket.fd.raw)
        guard local.port == 0 else { return local }
        try Sockets.bind(socket.fd.raw, to: .any(family: socket.facts.family))
        return try Sockets.localAddress(socket.fd.raw)
    }

    /// On the loop: the relay standing for `peer` to program sockets of `family`, made on first use.
    private func relay(for peer: SocketAddress, family: Int32) throws(SystemCallError) -> PeerRelay {
        let key = RelayKey(family: family, peer: peer.bytes)
        if let relay = relays.withLock({ $0[key] }) { return relay }
        let relay = try PeerRelay(peer: peer, family: family, service: self)
        relays.withLock { $0[key] = relay }
        if sweep == nil { scheduleSweep() }
        return relay
    }

    /// The most of one datagram that is carried (UDP's own limit, over IPv6).
    static let largestDatagram = 65535

    /// The program's `struct msghdr` at `address` and its pieces, as sendmsg and recvmsg take them; the
    /// kernel's errno where it would refuse them.
    static func messageHeader(_ memory: ProcessMemory, at address: UInt64)
        -> Result<(MessageHeader, [MessageHeader.Piece]), Errno>
    {
        guard let header = try? MessageHeader(memory.bytes(at: address, count: MessageHeader.size)) else {
            return .failure(.badAddress)
        }
        guard header.pieceCount <= MessageHeader.maximumPieces else { return .failure(.messageTooLong) }
        guard header.pieceCount > 0 else { return .success((header, [])) }
        guard let table = try? memory.bytes(at: header.pieces, count: 16 * header.pieceCount) else {
            return .failure(.badAddress)
        }
        return .success((header, MessageHeader.pieces(table)))
    }

    /// sendmsg's bytes: its pieces gathered, as the kernel would send them (at most `largestDatagram`).
    /// Its control messages are not carried (docs/kubernetes.md, "Limits").
    static func gathered(_ memory: ProcessMemory, header address: UInt64) -> Result<[UInt8], Errno> {
        let pieces: [MessageHeader.Piece]
        switch messageHeader(memory, at: address) {
        case .success(let (_, found)): pieces = found
        case .failure(let errno): return .failure(errno)
        }
        var bytes: [UInt8] = []
        for piece in pieces {
            guard bytes.count + piece.length <= largestDatagram else { return .failure(.messageTooLong) }
            guard let part = try? memory.bytes(at: piece.address, count: piece.length) else {
                return .failure(.badAddress)
            }
            bytes += part
        }
        return .success(bytes)
    }

    /// On the loop: the flow of the program's socket, which is bound to an ephemeral port first if it is not.
    private func flow(for socket: ProgramSocket) throws(SystemCallError) -> DatagramFlow {
        flow(at: try bound(socket).connectable, family: socket.facts.family)
    }

    /// On the loop: the flow of the program socket at `program` (where relays send to it), made on first use.
    func flow(at program: SocketAddress, family: Int32) -> DatagramFlow {
        let key = FlowKey(family: family, port: program.port ?? 0)
        if let flow = flows[key] { return flow }
        let flow = DatagramFlow(key: key, program: program)
        flows[key] = flow
        return flow
    }

    /// On the loop: what the program sent to `relay`'s peer: to the pod's DNS through `PodNames` when the
    /// peer is a name server (port 53) and it is a query; otherwise to the pod.
    func deliver(_ payload: [UInt8], on flow: DatagramFlow, to relay: PeerRelay) {
        flow.lastActive = Clock.monotonic()
        let program = flow.program
        if relay.peer.port == 53,
            names.answer(payload, server: relay.peer, udp: true, reply: { relay.send($0, to: program) })
        {
            return
        }
        let id = flow.stream ?? openStream(for: flow)
        try? client.upload(id, Datagram(address: relay.peer.bytes, payload: payload).encoded)
    }

    /// The pod's socket for `flow`: datagrams may follow the request at once (the agent keeps them until its
    /// socket is bound).
    private func openStream(for flow: DatagramFlow) -> UInt32 {
        let id = client.send(.datagrams(family: flow.key.family), prepare: { flow.stream = $0 }) { [self] reply in
            switch reply {
            case .response(.done):
                return .waitingOnClient
            case .chunk(let bytes):
                loop.execute { [self] in received(bytes, on: flow) }
                return .waitingOnClient
            case .response(.failure(let errno, let message)):
                logger.warning("the agent could not open a UDP socket in the pod: \(message) (errno \(errno))")
            case .linkFailure(let reason):
                logger.info("UDP socket of port \(flow.key.port) lost: \(reason)")
            case .response, .end:
                break
            }
            loop.execute { flow.stream = nil }
            return .complete
        }
        return id
    }

    /// On the loop: a datagram from the pod, handed to the program from its sender's relay.
    private func received(_ chunk: [UInt8], on flow: DatagramFlow) {
        guard flows[flow.key] === flow, let datagram = Datagram(chunk: chunk),
            let source = SocketAddress(datagram.address),
            let relay = try? relay(for: source, family: flow.key.family)
        else { return }
        flow.lastActive = Clock.monotonic()
        note(relay, sendingTo: flow.key)
        relay.send(datagram.payload, to: flow.program)
    }

    /// The sweep found the flow's program socket gone.
    private func end(_ key: FlowKey) {
        senders.withLock { $0[key] = nil }
        guard let flow = flows.removeValue(forKey: key) else { return }
        if let stream = flow.stream { client.cancel(stream) }
    }

    /// Drops the flows of program sockets that are gone, every `sweepInterval` (or `busySweepInterval` while
    /// many are relayed): a flow quiet since the last sweep whose port no UDP socket of the machine holds.
    private func scheduleSweep() {
        let busy = senders.withLock { $0.count } > Self.busyFlows
        let interval = busy ? Self.busySweepInterval : Self.sweepInterval
        sweep = loop.schedule(in: interval) { [self] in
            let now = Clock.monotonic()
            let relayed = senders.withLock { Set($0.keys) }.union(flows.keys)
            let quiet = relayed.filter { key in flows[key].map { now - $0.lastActive > interval } ?? true }
            if !quiet.isEmpty {
                let bound = Self.boundPorts()
                for key in quiet where !bound.contains(key) { end(key) }
            }
            scheduleSweep()
        }
    }

    /// The machine's bound UDP ports, from /proc/net/udp and udp6 (sysmirror shares the program's namespace).
    static func boundPorts() -> Set<FlowKey> {
        var ports = Set<FlowKey>()
        for (file, family) in [("/proc/net/udp", AF_INET), ("/proc/net/udp6", AF_INET6)] {
            for line in ProcessTree.read(file).split(separator: "\n").dropFirst() {
                let fields = line.split(separator: " ")
                guard fields.count > 1, let colon = fields[1].lastIndex(of: ":"),
                    let port = UInt16(fields[1][fields[1].index(after: colon)...], radix: 16)
                else { continue }
                ports.insert(FlowKey(family: family, port: port))
            }
        }
        return ports
    }

    // MARK: recvfrom and recvmsg

    /// Whether any program socket is relayed: until one is, a routed recvfrom is let go at once.
    package var isRelaying: Bool { !senders.withLock { $0.isEmpty } }

    /// A program socket this session relays, and the pod peers its relays stand for; nil for any other
    /// socket, found with one getsockname (recvfrom is routed for every socket, most of them not relayed).
    package struct RelayedSocket: Sendable {
        let socket: ProgramSocket
        let peers: [UInt16: SocketAddress]
    }

    package func relayedSocket(pid: Int32, number: Int32) -> RelayedSocket? {
        guard let fd = ProgramDescriptor.duplicate(pid: pid, number: number),
            let local = try? Sockets.localAddress(fd.raw), let port = local.port,
            let peers = senders.withLock({ $0[FlowKey(family: local.family, port: port)] }),
            (try? Sockets.option(fd.raw, SO_TYPE)) == Int32(SOCK_DGRAM.rawValue)
        else { return nil }
        let nonBlocking = ((try? fd.statusFlags()) ?? 0) & O_NONBLOCK != 0
        let facts = SocketFacts(family: local.family, transport: .udp, connected: false, inPod: false)
        let socket = ProgramSocket(
            fd: fd, number: number, facts: facts, type: Int32(SOCK_DGRAM.rawValue), socketProtocol: Int32(IPPROTO_UDP),
            nonBlocking: nonBlocking)
        return RelayedSocket(socket: socket, peers: peers)
    }

    /// Where a routed receive puts the datagram: recvfrom's buffer and address, or recvmsg's header.
    enum Destination {
        case buffer(at: UInt64, count: Int, address: UInt64, addressLength: UInt64)
        case message(at: UInt64, MessageHeader, pieces: [MessageHeader.Piece])

        var capacity: Int {
            switch self {
            case .buffer(_, let count, _, _): count
            case .message(_, _, let pieces): min(pieces.reduce(0) { $0 + $1.length }, RemoteDatagrams.largestDatagram)
            }
        }
        var controlCapacity: Int {
            if case .message(_, let header, _) = self { min(header.controlLength, 64 << 10) } else { 0 }
        }
    }

    /// Serves recvfrom with an address, or recvmsg, on a relayed socket: the datagram, and the pod peer's
    /// address for the relay's.
    package func serveReceive(
        _ notification: Notification, call: Syscall, _ relayed: RelayedSocket, done: @escaping PendingCall.Completion
    ) {
        let answer = PendingCall(notification: notification, listener: listener, logger: logger, done: done)
        let arguments = notification.arguments
        let destination: Destination
        let flags: Int32
        if call == .recvmsg {
            switch Self.messageHeader(ProcessMemory(pid: notification.pid), at: arguments[1]) {
            case .success(let (header, pieces)): destination = .message(at: arguments[1], header, pieces: pieces)
            case .failure(let errno): return answer.fail(errno.rawValue)
            }
            flags = Int32(truncatingIfNeeded: arguments[2])
        } else {
            destination = .buffer(
                at: arguments[1], count: Int(truncatingIfNeeded: arguments[2]), address: arguments[4],
                addressLength: arguments[5])
            flags = Int32(truncatingIfNeeded: arguments[3])
        }
        let waits = !relayed.socket.nonBlocking && flags & Int32(MSG_DONTWAIT) == 0
        receive(
            notification, socket: relayed.socket, peers: relayed.peers, flags: flags, waits: waits, destination, answer)
    }

    private func receive(
        _ notification: Notification, socket: ProgramSocket, peers: [UInt16: SocketAddress], flags: Int32, waits: Bool,
        _ destination: Destination, _ answer: PendingCall
    ) {
        let received: (length: Int, bytes: [UInt8], sender: SocketAddress?, control: [UInt8], flags: Int32)
        do throws(SystemCallError) {
            received = try Sockets.receiveMessage(
                socket.fd.raw, upTo: destination.capacity, controlCapacity: destination.controlCapacity,
                flags: flags | Int32(MSG_DONTWAIT))
        } catch {
            guard waits, error.errno == .resourceTemporarilyUnavailable else {
                return answer.fail(error.errno.rawValue)
            }
            // A blocking receive with nothing queued yet: the loop waits for the next datagram.
            return loop.execute { [self] in
                loop.whenReady(socket.fd.raw, for: .readable) { [self] _ in
                    guard listener.isPending(notification.id) else { return answer.gone() }
                    receive(notification, socket: socket, peers: peers, flags: flags, waits: waits, destination, answer)
                }
            }
        }
        let sender = received.sender.map { sender in
            (sender.unmapped.isLoopback ? sender.port.flatMap { peers[$0] } : nil)?.seen(byFamily: socket.facts.family)
                ?? sender
        }
        // Checked before writing: the pid may be reused once the call is gone.
        guard listener.isPending(notification.id) else { return answer.gone() }
        let memory = ProcessMemory(pid: notification.pid)
        switch destination {
        case .buffer(let at, _, let address, let addressLength):
            if let sender, address != 0, addressLength != 0 {
                guard let room = try? memory.readable(at: addressLength, count: 4) else { return answer.fail(EFAULT) }
                let capacity = Int(room.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) })
                guard Self.writeAddress(sender.bytes, capacity: capacity, at: address, length: addressLength, memory)
                else { return answer.fail(EFAULT) }
            }
            answer.write(received.bytes, at: at, result: Int64(received.length))
        case .message(let at, let header, let pieces):
            let name = header.name != 0 ? sender?.bytes ?? [] : []
            let written =
                Self.writeAddress(
                    name, capacity: header.nameLength, at: header.name,
                    length: at + MessageHeader.nameLengthOffset, memory)
                && MessageHeader.scatter(received.bytes, into: pieces).allSatisfy {
                    memory.write(Array($0.bytes), at: $0.address) == 0
                }
                && (received.control.isEmpty || memory.write(received.control, at: header.control) == 0)
                && memory.write(
                    withUnsafeBytes(of: UInt64(received.control.count)) { Array($0) },
                    at: at + MessageHeader.controlLengthOffset) == 0
                && memory.write(
                    withUnsafeBytes(of: received.flags) { Array($0) }, at: at + MessageHeader.flagsOffset) == 0
            if written { answer.succeed(Int64(received.length)) } else { answer.fail(EFAULT) }
        }
    }

    /// Writes `address` (cut to `capacity`) at `at`, and its whole length as a socklen_t at `length`, as the
    /// kernel does; false on a fault.
    private static func writeAddress(
        _ address: [UInt8], capacity: Int, at: UInt64, length: UInt64, _ memory: ProcessMemory
    ) -> Bool {
        (address.isEmpty || capacity == 0 || memory.write(Array(address.prefix(capacity)), at: at) == 0)
            && memory.write(withUnsafeBytes(of: UInt32(address.count)) { Array($0) }, at: length) == 0
    }
}

/// One program socket's socket in the pod.
final class DatagramFlow: @unchecked Sendable {  // touched only on the serving loop
    let key: RemoteDatagrams.FlowKey
    /// Where the relays send: the program socket's address (loopback for a wildcard one).
    let program: SocketAddress
    /// The `datagrams` request of the pod's socket, once one was sent.
    var stream: UInt32?
    var lastActive = Clock.monotonic()

    init(key: RemoteDatagrams.FlowKey, program: SocketAddress) {
        self.key = key
        self.program = program
    }
}

/// A loopback UDP socket of sysmirror's that stands for one pod peer to the program's sockets of one family:
/// what a program socket sends to it goes to that peer, and what that peer sends comes to the program socket
/// from it. Made on the loop and kept for the session; sending works from any thread.
final class PeerRelay: Sendable {
    let peer: SocketAddress
    let fd: SharedDescriptor
    let address: SocketAddress
    var port: UInt16 { address.port ?? 0 }

    init(peer: SocketAddress, family: Int32, service: RemoteDatagrams) throws(SystemCallError) {
        self.peer = peer
        fd = SharedDescriptor(
            try Sockets.make(family: family, type: Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue)))
        try Sockets.bind(fd.raw, to: .loopback(family: family))
        address = try Sockets.localAddress(fd.raw)
        _ = try service.loop.register(fd.raw, for: .readable) { [weak self, weak service] _ in
            guard let self, let service else { return }
            self.readAll(family: family, service: service)
        }
    }

    /// On the loop: what the program's sockets sent to this peer, each datagram delivered on its sender's flow.
    private func readAll(family: Int32, service: RemoteDatagrams) {
        while let datagram = try? Sockets.receiveMessage(
            fd.raw, upTo: RemoteDatagrams.largestDatagram, controlCapacity: 0, flags: Int32(MSG_DONTWAIT)),
            let sender = datagram.sender
        {
            service.deliver(datagram.bytes, on: service.flow(at: sender, family: family), to: self)
        }
    }

    /// A datagram to the program socket at `program`. A socket gone meanwhile is the sweep's to find.
    func send(_ payload: [UInt8], to program: SocketAddress) {
        _ = try? Sockets.send(fd.raw, payload[...], to: program, flags: Int32(MSG_DONTWAIT))
    }
}
