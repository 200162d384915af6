import AgentLink
import AgentProtocol
import LinuxSystem
import Logging
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The pod's file answers a session keeps, true because the agent watches every path it answered and says
/// when one changed (`watch`, `invalidated`; docs/configuration.md, "The file cache"): metadata (stat,
/// lstat, statx), access, readlink, missing paths (ENOENT, ENOTDIR), directories' entries (a later listing
/// gets a placeholder made from them), and the content of regular files opened to read, whose later
/// read-only opens each get an open file description of their own on the kept content, with no round trip.
///
/// An answer is kept only when nothing was invalidated between its request and its arrival (`Ticket`): a
/// change the agent told of meanwhile could be older or newer than the answer. Nothing is kept, or used,
/// while the link is down or after it came back until the agent watches again.
package final class FileCache: Sendable {
    /// Taken when a request is sent; an answer is kept only if the ticket is still good when it comes.
    struct Ticket {
        let version: UInt64
    }

    struct Entry {
        var metadata: [Bool: FileMetadata] = [:]
        /// ENOENT or ENOTDIR, by whether symlinks were followed.
        var missing: [Bool: Int32] = [:]
        var access: [Int32: Int32] = [:]
        var link: [UInt8]?
        /// A directory's entries, for its next listing.
        var entries: [DirectoryEntry]?
        /// A regular file's content; every open gets an open file description of its own on it.
        var content: KeptContent?
        var contentSize = 0
        var lastUsed: UInt64 = 0
    }

    struct State {
        var entries: [[UInt8]: Entry] = [:]
        /// Bumped by every invalidation: answers asked for before it are not kept.
        var version: UInt64 = 1
        /// Whether the agent watches what it answers (its `watch` is `done`, and the link has not broken since).
        var active = false
        var contentBytes = 0
        var unwatchedNoted = false
    }

    /// Set once the session's link is up (`attach`).
    private let link = Mutex<AgentClient?>(nil)
    let logger: Logger
    /// Content kept beyond this many bytes pushes out what was least recently used.
    let limit: Int
    /// Asked for as soon as the agent watches, before the program asks (`prefetch`).
    let prefetched: [[UInt8]]
    private let state = Mutex(State())
    public static let defaultLimit = 256 << 20
    /// What glibc's and musl's lookups read (resolv.conf and hosts at every lookup; gai.conf and host.conf,
    /// which pods seldom have, at the first; glibc's NSS also stats "/" to notice a chroot): one round trip
    /// each, unless kept. A directory's prefetch is its metadata only.
    package static let resolverFiles = ["/", "/etc/resolv.conf", "/etc/hosts", "/etc/gai.conf", "/etc/host.conf"].map {
        Array($0.utf8)
    }

    /// A cache whose first requests (`firstRequests`) go out with the session's hello, and which then
    /// works on the link it is attached to.
    package init(limit: Int = FileCache.defaultLimit, prefetching prefetched: [[UInt8]] = [], logger: Logger) {
        self.limit = limit
        self.prefetched = prefetched
        self.logger = logger
    }

    var client: AgentClient? { link.withLock { $0 } }

    /// `watch`, then the prefetched paths' stat and open, for the hello's write: the agent reads them in
    /// order, so it watches before it answers the others, whose answers can be kept.
    package func firstRequests() -> [(Request, AgentClient.Handler)] {
        let ticket = Ticket(version: state.withLock { $0.version })
        let watch: AgentClient.Handler = { [self] in watchReply($0, thenPrefetch: false) }
        return [(.watch, watch)] + prefetched.flatMap { prefetchRequests($0, ticket: ticket) }
    }

    /// The session's link, once it is open.
    package func attach(_ client: AgentClient) {
        link.withLock { $0 = client }
        // After a cut nothing kept is trusted: the pod may have changed meanwhile, unseen. The new connection
        // is a new session in the agent, which watches again once asked.
        client.whenLinkFails { [self] _ in state.withLock { $0 = State(version: $0.version + 1) } }
        client.whenLinkIsBack { [self] in
            client.send(.watch) { [self] in watchReply($0, thenPrefetch: true) }
        }
    }

    private func watchReply(_ reply: Reply, thenPrefetch: Bool) -> ReplyDisposition {
        switch reply {
        case .response(.done):
            let ticket = state.withLock { state in
                state.active = true
                return Ticket(version: state.version)
            }
            if thenPrefetch, let client {
                for path in prefetched {
                    for (request, handler) in prefetchRequests(path, ticket: ticket) {
                        client.send(request, handler: handler)
                    }
                }
            }
            return .waitingOnClient
        case .response(.invalidated(let paths)):
            state.withLock { state in
                state.version += 1
                for path in paths { state.remove(path) }
            }
            return .waitingOnClient
        case .response(.unwatched(let path, let reason)):
            let first = state.withLock { state in
                state.version += 1
                defer { state.unwatchedNoted = true }
                return !state.unwatchedNoted
            }
            if first {
                logger.notice("\(String(decoding: path, as: UTF8.self)) and paths like it are not cached: \(reason)")
            }
            return .waitingOnClient
        case .response(.failure(_, let message)):
            logger.notice("the agent keeps no file cache true (\(message)): every file call asks it")
            return .complete
        case .response, .chunk, .end, .linkFailure:
            return .complete
        }
    }

    /// `path`'s metadata and content asked for without a program asking (the session's start, a link that
    /// came back), so that the program's first reads of it cost nothing. A path ending in "/" is asked for its
    /// metadata only; a directory's listing or a file of 1 MiB or more is not kept.
    private func prefetchRequests(_ path: [UInt8], ticket: Ticket) -> [(Request, AgentClient.Handler)] {
        let download = Mutex<(content: ContentFile?, metadata: FileMetadata?)>((nil, nil))
        let stat: AgentClient.Handler = { [self] reply in
            if case .response(let response) = reply { keepStatus(path, following: true, response, ticket) }
            return .complete
        }
        let open: AgentClient.Handler = { [self] reply in
            switch reply {
            case .response(.opened(let metadata)):
                if metadata.isRegularFile && metadata.size < 1 << 20 {
                    download.withLock {
                        $0.content = try? ContentFile(name: path, size: metadata.size, scratch: "")
                        $0.metadata = metadata
                    }
                }
                return .expectingMore
            case .chunk(let bytes):
                download.withLock { state in
                    if (try? state.content?.append(bytes)) == nil { state.content = nil }
                }
                return .expectingMore
            case .end:
                download.withLock { state in
                    if let file = state.content, let metadata = state.metadata,
                        (try? file.flush(matching: metadata)) != nil, let kept = try? file.reopen(O_RDONLY)
                    {
                        keepContent(path, kept, size: Int(metadata.size), ticket)
                    }
                    state.content?.close()
                }
                return .complete
            case .response, .linkFailure:
                return .complete
            }
        }
        let statOnly = path.last == UInt8(ascii: "/")
        return [(.stat(path: path, followSymlinks: true), stat)]
            + (statOnly ? [] : [(.open(path: path, flags: O_RDONLY, mode: 0), open)])
    }

    /// For a request about to be sent; nil while nothing can be kept.
    func ticket() -> Ticket? {
        state.withLock { $0.active ? Ticket(version: $0.version) : nil }
    }

    /// Runs `update` on `path`'s entry if `ticket` is still good.
    private func keep(_ path: [UInt8], _ ticket: Ticket?, _ update: (inout Entry) -> Void) {
        ifStillGood(ticket) { state in
            update(&state.entries[path, default: Entry()])
            state.entries[path]?.lastUsed = Clock.monotonic()
        }
    }

    /// Runs `body` on the state, under its lock, if `ticket` is still good: nothing changed since it was taken.
    private func ifStillGood(_ ticket: Ticket?, _ body: (inout State) -> Void) {
        guard let ticket else { return }
        state.withLock { state in
            guard state.active, state.version == ticket.version else { return }
            body(&state)
        }
    }

    private func look<T>(_ path: [UInt8], _ read: (Entry) -> T?) -> T? {
        state.withLock { state in
            guard state.active, let entry = state.entries[path], let found = read(entry) else { return nil }
            state.entries[path]?.lastUsed = Clock.monotonic()
            return found
        }
    }

    // MARK: Answers

    enum Status {
        case metadata(FileMetadata)
        case missing(Int32)
    }

    func status(_ path: [UInt8], following: Bool) -> Status? {
        look(path) { entry in
            entry.metadata[following].map(Status.metadata) ?? entry.missing[following].map(Status.missing)
        }
    }

    func keepStatus(_ path: [UInt8], following: Bool, _ response: Response, _ ticket: Ticket?) {
        switch response {
        case .metadata(let metadata): keep(path, ticket) { $0.metadata[following] = metadata }
        case .failure(let errno, _) where errno == ENOENT || errno == ENOTDIR:
            keep(path, ticket) { $0.missing[following] = errno }
        default: break
        }
    }

    /// 0 for an access that passes, else its errno.
    func access(_ path: [UInt8], mode: Int32) -> Int32? { look(path) { $0.access[mode] } }

    func keepAccess(_ path: [UInt8], mode: Int32, _ response: Response, _ ticket: Ticket?) {
        switch response {
        case .done: keep(path, ticket) { $0.access[mode] = 0 }
        case .failure(let errno, _) where [ENOENT, ENOTDIR, EACCES].contains(errno):
            keep(path, ticket) { $0.access[mode] = errno }
        default: break
        }
    }

    func link(_ path: [UInt8]) -> [UInt8]? { look(path) { $0.link } }

    func keepLink(_ path: [UInt8], _ target: [UInt8], _ ticket: Ticket?) { keep(path, ticket) { $0.link = target } }

    func keepEntries(_ path: [UInt8], _ entries: [DirectoryEntry], _ ticket: Ticket?) {
        keep(path, ticket) { $0.entries = entries }
    }

    /// The kept content of `path`; nil when none is kept.
    func content(_ path: [UInt8]) -> KeptContent? { look(path) { $0.content } }

    /// What a read open of `path` can be answered with, in one look.
    enum KeptOpen {
        /// A regular file's content (not for an open with O_DIRECTORY).
        case content(KeptContent)
        /// The pod does not have it: the open fails as its stat did.
        case missing(Int32)
        /// A directory's entries.
        case entries([DirectoryEntry])
    }

    func forReadOpen(_ path: [UInt8], directoryOnly: Bool) -> KeptOpen? {
        look(path) { entry in
            if !directoryOnly, let content = entry.content { return .content(content) }
            if entry.metadata[true] == nil, let errno = entry.missing[true] { return .missing(errno) }
            return entry.entries.map(KeptOpen.entries)
        }
    }

    /// Keeps `content` (a read-only descriptor of its own) for `path`, pushing out the least recently used
    /// contents past the limit.
    func keepContent(_ path: [UInt8], _ content: consuming OwnedDescriptor, size: Int, _ ticket: Ticket?) {
        guard size <= limit else { return }
        let kept = KeptContent(content)
        ifStillGood(ticket) { state in
            state.remove(path, contentOnly: true)
            state.entries[path, default: Entry()].content = kept
            state.entries[path]?.contentSize = size
            state.entries[path]?.lastUsed = Clock.monotonic()
            state.contentBytes += size
            while state.contentBytes > limit,
                let oldest = state.entries.filter({ $0.value.content != nil }).min(by: {
                    $0.value.lastUsed < $1.value.lastUsed
                })?.key
            {
                state.remove(oldest, contentOnly: true)
            }
        }
    }

    /// The path was written through sysmirror (`--fs-mode write`): what was kept of it is stale.
    func forget(_ path: [UInt8]) {
        state.withLock { state in
            state.version += 1
            state.remove(path)
        }
    }
}

extension FileCache.State {
    mutating func remove(_ path: [UInt8], contentOnly: Bool = false) {
        guard let entry = entries[path] else { return }
        contentBytes -= entry.contentSize
        if contentOnly {
            entries[path]?.content = nil
            entries[path]?.contentSize = 0
        } else {
            entries[path] = nil
        }
    }
}

/// A kept file's content: each open of it gets an open file description of its own (its own offset).
final class KeptContent: Sendable {
    private let file: OwnedDescriptor

    init(_ file: consuming OwnedDescriptor) { self.file = file }

    func open() -> OwnedDescriptor? { try? file.reopen(O_RDONLY) }
}
