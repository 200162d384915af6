import NameResolution

/// The protocol version this build speaks. Both sides name theirs in the handshake; a mismatch is refused
/// with both numbers in the message.
public let protocolVersion: UInt16 = 6

/// Every message of the supervisor↔agent link. docs/protocol.md describes the bytes.
///
/// After the handshake (`hello`, then `welcome` or `refused`), requests carry an id chosen by the client,
/// and everything the agent sends about a request carries the same id, so hundreds can be in flight on one
/// connection. Bulk data (a file's content, a directory's entries, bytes written to a remote file) moves as
/// `chunk` frames closed by `end`, interleaved with everything else.
public enum Message: Sendable, Equatable {
    /// Client → agent, first frame: the protocol version and the session token.
    case hello(version: UInt16, token: [UInt8])
    /// Agent → client: the session is open.
    case welcome(version: UInt16, agent: String)
    /// Agent → client: the session is refused (bad token, another version); the agent then closes.
    case refused(version: UInt16, reason: String)
    /// Either side: the peer broke the protocol (a garbled frame); the sender then closes.
    case protocolError(String)
    case request(id: UInt32, Request)
    case response(id: UInt32, Response)
    /// A piece of a stream belonging to request `id`.
    case chunk(id: UInt32, [UInt8])
    /// The stream of request `id` is complete.
    case end(id: UInt32)
    /// Client → agent: the program's call went away; stop the stream of request `id` (a relayed TCP
    /// connection: reset it).
    case cancel(id: UInt32)
    /// Either side, on a relayed TCP connection's stream: the sender passed on this many more of the
    /// receiver's bytes, which may send that many more (`StreamWindow`).
    case credit(id: UInt32, bytes: UInt32)
    /// A message type this build does not know (sent by a newer peer); the agent answers ENOSYS.
    case unknown(type: UInt8, id: UInt32)
}

extension Message {
    /// The message's kind, as errors and logs name it.
    public var kind: String {
        switch self {
        case .hello: "hello"
        case .welcome: "welcome"
        case .refused: "refused"
        case .protocolError: "protocol error"
        case .request: "request"
        case .response: "response"
        case .chunk: "chunk"
        case .end: "end"
        case .cancel: "cancel"
        case .credit: "credit"
        case .unknown(let type, _): "message type 0x\(String(type, radix: 16))"
        }
    }
}

/// What a client asks of the agent.
public enum Request: Sendable, Equatable {
    /// The target's environment, as `KEY=VALUE` entries.
    case environment
    /// The target's hostname.
    case hostname
    /// Opens a file inside the target's root. A regular file opened for reading answers `opened` and
    /// streams its content; a directory answers `opened` and streams its entries (`DirectoryEntry`
    /// encoding); a file opened for writing answers `opened` and then takes the client's chunks until
    /// the client's `end`, answered by `done`.
    case open(path: [UInt8], flags: Int32, mode: UInt32)
    /// stat (following symlinks) or lstat.
    case stat(path: [UInt8], followSymlinks: Bool)
    /// access(2) with F_OK/R_OK/W_OK/X_OK bits.
    case access(path: [UInt8], mode: Int32)
    case readlink(path: [UInt8])
    /// A socket made in the target's network namespace (`socket(2)` arguments), passed back with SCM_RIGHTS
    /// beside a `done` answer; only on the socket channel of a unix-socket agent (docs/protocol.md).
    case socket(family: Int32, type: Int32, protocol: Int32)
    /// A NETLINK_SOCK_DIAG socket of the target's network namespace, subscribed to the end of TCP
    /// connections (their byte counts), passed like `socket`; on the socket channel only.
    case connectionEvents
    /// A TCP connection from the target's network namespace to `address` (a sockaddr_in or sockaddr_in6),
    /// for agents that cannot pass sockets (reached through a port-forward). Only as a connection's first
    /// request: after its `done` the connection carries the TCP connection's bytes and nothing else.
    case connect(address: [UInt8])
    /// Incoming traffic: the pod's connections to `port` reach the client as well (mirror) or instead (steal).
    /// Answered by `done` once the port is subscribed, then by one `incoming` response per stolen
    /// connection, or `mirror` batches of copies, until the client cancels the request or the session ends.
    case listen(IncomingSubscription)
    /// Takes the pod's stolen connection `connection` (announced by `incoming`). Only as a connection's
    /// first request: after its `done` the connection carries that connection's bytes both ways.
    case takeIncoming(connection: UInt64)
    /// The listening socket of `family` (AF_INET, AF_INET6) that takes the pod's connections to the stolen
    /// `port` (whole connections, no HTTP filter), passed like `socket`; on the socket channel only. The
    /// client accepts the pod's connections of that family from it from then on, and the agent stops
    /// announcing them (docs/incoming.md).
    case stolenListener(port: UInt16, family: Int32)
    /// A sign of life, answered `done`: a session that takes the pod's ports sends one every few seconds,
    /// and the agent ends such a session when they stop (docs/incoming.md, "Giving the port back").
    case ping
    /// DNS questions for the name server at `server` (a sockaddr_in or sockaddr_in6, as the program addressed
    /// it), asked from the pod all at once: every candidate of one lookup's search list, A and AAAA.
    /// Answered by `answers`, the server's answer messages, one for each question that got one.
    case resolve(server: [UInt8], questions: [DNSQuestion])
    /// A UDP socket in the pod's network namespace for a program's UDP socket, for agents that cannot pass
    /// sockets: answered `done`, then the client's chunks are datagrams to send and the agent's chunks
    /// datagrams received, each a `Datagram`; the socket closes with the client's `cancel` or `end`.
    case datagrams(family: Int32)
    /// The session keeps answers (its file cache): from now on the agent watches, inside the pod, every path
    /// it answers `stat`, `access`, `readlink` or a read `open` of a regular file for, and says on this
    /// request's stream when one changed (`invalidated`), or that it could not watch one (`unwatched`, sent
    /// before that path's answer). Answered `done` first.
    case watch
}

extension Request {
    /// Whether asking again is the same as asking once: it reads and changes nothing in the pod, and leaves
    /// no state in the agent past its answer. A resumed link sends such a request again when the cut came
    /// before its first reply (`AgentClient.Resumption`).
    public var isRepeatable: Bool {
        switch self {
        case .environment, .hostname, .stat, .access, .readlink, .resolve, .ping: true
        case .open(_, let flags, _): OpenIntent(flags: flags) == .read
        case .socket, .connectionEvents, .connect, .listen, .takeIncoming, .stolenListener, .datagrams, .watch:
            false
        }
    }
}

/// One datagram of a `datagrams` stream: where it goes (client → agent) or where it came from (agent →
/// client), a sockaddr_in or sockaddr_in6, and its bytes.
public struct Datagram: Sendable, Equatable {
    public var address: [UInt8]
    public var payload: [UInt8]

    public init(address: [UInt8], payload: [UInt8]) {
        self.address = address
        self.payload = payload
    }

    /// A chunk's bytes: the address's length (UInt8), the address, the payload.
    public var encoded: [UInt8] { [UInt8(address.count)] + address + payload }

    /// Nil when the chunk is too short for the address it announces.
    public init?(chunk: [UInt8]) {
        guard let length = chunk.first.map(Int.init), chunk.count >= 1 + length else { return nil }
        address = Array(chunk[1..<1 + length])
        payload = Array(chunk[(1 + length)...])
    }
}

/// What a `listen` asks for.
public struct IncomingSubscription: Sendable, Equatable {
    public enum Mode: UInt8, Sendable {
        case mirror = 1, steal = 2
    }

    /// The port in the pod.
    public var port: UInt16
    public var mode: Mode
    /// With steal: only HTTP requests with a header line (`Name: value`) matching this regular expression go
    /// to the client; empty: no header condition.
    public var headerPattern: String
    /// With steal: only HTTP requests whose path matches this; empty: no path condition.
    public var pathPattern: String
    /// The family of the program's listening socket (AF_INET, AF_INET6): a stolen connection the client
    /// accepts itself is of this family where it can be.
    public var family: Int32
    /// Who steals, as `user@machine`: other sessions' refusals and notices name them so.
    public var developer: String

    public init(
        port: UInt16, mode: Mode, headerPattern: String = "", pathPattern: String = "", family: Int32 = 10,
        developer: String = ""
    ) {
        self.port = port
        self.mode = mode
        self.headerPattern = headerPattern
        self.pathPattern = pathPattern
        self.family = family
        self.developer = developer
    }

    /// Whether requests are split by an HTTP filter, rather than whole connections taken.
    public var filtersHTTP: Bool { mode == .steal && !(headerPattern.isEmpty && pathPattern.isEmpty) }
}

/// A connection that reached the pod, as the agent announces it.
public struct IncomingConnection: Sendable, Equatable {
    /// The agent's number for it, for `takeIncoming`.
    public var id: UInt64
    /// The pod's client: a sockaddr_in or sockaddr_in6.
    public var client: [UInt8]

    public init(id: UInt64, client: [UInt8]) {
        self.id = id
        self.client = client
    }
}

/// What the agent answers.
public enum Response: Sendable, Equatable {
    /// The call fails in the pod with `errno`; `message` says more when the errno alone would mislead.
    case failure(errno: Int32, message: String)
    case done
    /// The file is open; its content or entries follow as chunks.
    case opened(FileMetadata)
    case metadata(FileMetadata)
    case environment([[UInt8]])
    /// A hostname or a symlink's target.
    case text([UInt8])
    /// A connection reached a port the client listens on (after `listen`'s `done`).
    case incoming(IncomingConnection)
    /// What happened to the mirrored connections of a `listen` request since the last `mirror`, in order:
    /// copies travel on the listen stream, in batches, with no link connection of their own.
    case mirror([MirrorEvent])
    /// The answers to a `resolve`, each a whole DNS message, in no set order.
    case answers([[UInt8]])
    /// On a `watch` stream: these paths (as the client asked for them) may have changed in the pod.
    case invalidated([[UInt8]])
    /// On a `watch` stream: this path's next answer cannot be kept (no watch: a limit, or a file system
    /// without change events), with why.
    case unwatched(path: [UInt8], reason: String)
    /// On a `listen` stream: something its developer should hear of, such as a request that matched their
    /// filter and went to a session that shares the port and took it first.
    case notice(String)
}

/// One step of a mirrored connection's copy.
public enum MirrorEvent: Sendable, Equatable {
    /// A connection reached the port; `client` is a sockaddr_in or sockaddr_in6.
    case opened(connection: UInt64, client: [UInt8])
    /// The client's next bytes.
    case bytes(connection: UInt64, [UInt8])
    /// The client ended the connection; not `complete`: the copy was cut short (packets the kernel dropped,
    /// or a client of the agent too far behind).
    case ended(connection: UInt64, complete: Bool)
}

/// A file's metadata as stat reports it in the pod.
public struct FileMetadata: Sendable, Equatable {
    public struct Time: Sendable, Equatable {
        public var seconds: Int64
        public var nanoseconds: UInt32
        public init(seconds: Int64, nanoseconds: UInt32) {
            self.seconds = seconds
            self.nanoseconds = nanoseconds
        }
    }

    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var blockSize: UInt32
    public var linkCount: UInt64
    public var size: UInt64
    public var device: UInt64
    public var inode: UInt64
    public var specialDevice: UInt64
    public var blocks: UInt64
    public var accessed: Time
    public var modified: Time
    public var changed: Time

    public init(
        mode: UInt32, uid: UInt32, gid: UInt32, blockSize: UInt32, linkCount: UInt64, size: UInt64, device: UInt64,
        inode: UInt64, specialDevice: UInt64, blocks: UInt64, accessed: Time, modified: Time, changed: Time
    ) {
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.blockSize = blockSize
        self.linkCount = linkCount
        self.size = size
        self.device = device
        self.inode = inode
        self.specialDevice = specialDevice
        self.blocks = blocks
        self.accessed = accessed
        self.modified = modified
        self.changed = changed
    }

    static let typeMask: UInt32 = 0o170000
    public var isDirectory: Bool { mode & Self.typeMask == 0o040000 }
    public var isRegularFile: Bool { mode & Self.typeMask == 0o100000 }
}

/// One entry of a remote directory, as streamed after `opened` for a directory.
public struct DirectoryEntry: Sendable, Equatable {
    /// The d_type value (DT_REG, DT_DIR, DT_LNK, ...).
    public var type: UInt8
    public var name: [UInt8]

    public init(type: UInt8, name: [UInt8]) {
        self.type = type
        self.name = name
    }

    public static let regular: UInt8 = 8
    public static let directory: UInt8 = 4
    public static let symbolicLink: UInt8 = 10
}
