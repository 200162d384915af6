import AgentLink
import AgentProtocol
import LinuxSystem
import Logging
import NIOCore
import NIOPosix
import Synchronization
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// One client connection: the handshake, then its requests.
///
/// Metadata requests and files that fit in one chunk are served on the connection's event loop thread:
/// each is a few microseconds of local file system work, and a hop to another thread and back would cost
/// more than that. Larger files stream from the thread pool, a chunk at a time, so they never hold up the
/// small requests of the same session.
final class SessionHandler: ChannelInboundHandler {
    typealias InboundIn = Message
    typealias OutboundOut = Message

    enum State { case handshake, open, closed }

    /// An upload in progress: the file opened for writing in the pod.
    struct Upload {
        let fd: SystemPackage.FileDescriptor
    }

    let number: Int
    let configuration: AgentServer.Configuration
    let pool: NIOThreadPool
    let registry: IncomingRegistry
    /// The agent's watches, for a session that keeps answers (`watch`); nil without inotify.
    let watches: FileWatches?
    /// The session's `watch` request, once it sent one: the paths it asks about are watched.
    var watchRequest: UInt32?
    /// The session's incoming traffic, from its first `listen`.
    var incoming: IncomingSession?
    /// When the client was last heard from, and the check that ends a silent session with taken ports.
    var lastHeard = NIODeadline.now()
    var silenceCheck: RepeatedTask?
    let idle: IdleTimer
    var logger: Logger
    var state = State.handshake
    private var uploads: [UInt32: Upload] = [:]
    /// The pod's UDP sockets of `datagrams` requests, by request (PodDatagrams.swift).
    var datagramSockets: [UInt32: any Channel] = [:]
    /// Datagrams that came while their request's socket was being bound: sent once it is.
    var datagramsWaiting: [UInt32: [[UInt8]]] = [:]
    /// The connections relayed on the link, by request (`connect`, `take incoming`: StreamRelay.swift).
    var streams: [UInt32: LinkStreamEnd] = [:]
    private let cancelled = CancelledStreams()
    private var handshakeDeadline: Scheduled<Void>?
    private var requests = 0
    static let handshakeTimeout = TimeAmount.seconds(10)

    init(
        number: Int, configuration: AgentServer.Configuration, pool: NIOThreadPool, registry: IncomingRegistry,
        watches: FileWatches?, idle: IdleTimer, logger: Logger
    ) {
        self.watches = watches
        self.number = number
        self.configuration = configuration
        self.pool = pool
        self.registry = registry
        self.idle = idle
        self.logger = logger
        self.logger[metadataKey: "session"] = "\(number)"
    }

    var target: TargetRoot { configuration.target.root }

    func channelActive(context: ChannelHandlerContext) {
        let peer = context.remoteAddress.map { "\($0)" } ?? "a unix socket peer"
        logger[metadataKey: "peer"] = "\(peer)"
        let channel = context.channel
        handshakeDeadline = context.eventLoop.scheduleTask(in: Self.handshakeTimeout) { [logger] in
            logger.warning("closed a connection that sent no handshake within 10 s")
            channel.close(promise: nil)
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        handshakeDeadline?.cancel()
        for (_, upload) in uploads { try? upload.fd.close() }
        uploads = [:]
        for (_, socket) in datagramSockets { socket.close(promise: nil) }
        datagramSockets = [:]
        datagramsWaiting = [:]
        for (_, stream) in streams { stream.clientCancelled() }
        streams = [:]
        cancelled.ids.withLock { $0 = [] }
        silenceCheck?.cancel()
        if watchRequest != nil { watches?.end(session: number) }
        if let incoming { pool.submit { _ in incoming.end() } }
        if state == .open {
            logger.info("session closed after \(requests) request(s)")
            idle.execute { $0.sessionEnded() }
        }
        state = .closed
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let reason = (error as? ProtocolViolation)?.description ?? "\(error)"
        logger.warning("closing the session: \(reason)")
        if state != .closed {
            context.writeAndFlush(wrapOutboundOut(.protocolError(reason)), promise: nil)
        }
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        lastHeard = .now()
        let message = unwrapInboundIn(data)
        switch (state, message) {
        case (.handshake, .hello(let version, let token)):
            handshake(context: context, version: version, token: token)
        case (.handshake, _):
            violation(context: context, "expected hello, got \(message.kind)")
        case (.open, .request(let id, .connect(let address))):
            requests += 1
            connectStream(id, to: address, context: context)
        case (.open, .request(let id, .takeIncoming(let connection))):
            requests += 1
            takeIncoming(id, connection, context: context)
        case (.open, .request(let id, .listen(let subscription))):
            requests += 1
            listen(id, subscription, context: context)
        case (.open, .request(let id, let request)):
            requests += 1
            serve(id, request, context: context)
        case (.open, .chunk(let id, let bytes)):
            if let stream = streams[id] {
                stream.received(bytes)
            } else if let socket = datagramSockets[id] {
                sendDatagram(bytes, on: socket)
            } else if datagramsWaiting[id] != nil {
                datagramsWaiting[id]!.append(bytes)
            } else {
                write(bytes, to: id, context: context)
            }
        case (.open, .end(let id)):
            streams[id]?.clientEnd()
            datagramsWaiting[id] = nil
            datagramSockets.removeValue(forKey: id)?.close(promise: nil)
            finishUpload(id, context: context)
        case (.open, .cancel(let id)):
            if let stream = streams[id] {
                stream.clientCancelled()
            } else {
                datagramsWaiting[id] = nil
                datagramSockets.removeValue(forKey: id)?.close(promise: nil)
                cancelled.ids.withLock { _ = $0.insert(id) }
                if let upload = uploads.removeValue(forKey: id) { try? upload.fd.close() }
                if let incoming { pool.submit { _ in incoming.unsubscribe(request: id) } }
            }
        case (.open, .credit(let id, let bytes)):
            streams[id]?.credited(Int(bytes))
        case (.open, .unknown(_, let id)):
            reply(context, id, .failure(errno: ENOSYS, message: "this agent does not know \(message.kind)"))
        case (.open, _):
            violation(context: context, "a client may not send a \(message.kind)")
        case (.closed, _):
            break
        }
    }

    func violation(context: ChannelHandlerContext, _ reason: String) {
        logger.warning("closing the session: \(reason)")
        context.writeAndFlush(wrapOutboundOut(.protocolError(reason)), promise: nil)
        state = .closed
        context.close(promise: nil)
    }

    func handshake(context: ChannelHandlerContext, version: UInt16, token: [UInt8]) {
        handshakeDeadline?.cancel()
        let refusal: String?
        if version != protocolVersion {
            refusal =
                "protocol version mismatch: the client speaks version \(version), this agent version \(protocolVersion); run the same sysmirror release on both sides"
        } else if !configuration.token.accepts(token) {
            refusal = "wrong token: the client's --token-file does not match the agent's"
        } else {
            refusal = nil
        }
        if let refusal {
            logger.warning("refused a session: \(refusal)")
            context.writeAndFlush(wrapOutboundOut(.refused(version: protocolVersion, reason: refusal)), promise: nil)
            state = .closed
            context.close(promise: nil)
            return
        }
        state = .open
        idle.execute { $0.sessionStarted() }
        logger.info("session opened")
        let agent = "sysmirror agent serving \(configuration.target.spec)"
        context.writeAndFlush(wrapOutboundOut(.welcome(version: protocolVersion, agent: agent)), promise: nil)
    }

    /// Compares in time that does not depend on where the first difference is.
    func reply(_ context: ChannelHandlerContext, _ id: UInt32, _ response: Response) {
        context.writeAndFlush(wrapOutboundOut(.response(id: id, response)), promise: nil)
    }

    func serve(_ id: UInt32, _ request: Request, context: ChannelHandlerContext) {
        switch request {
        case .environment:
            switch configuration.target.environment() {
            case .success(let entries): reply(context, id, .environment(entries))
            case .failure(let error): reply(context, id, .failure(errno: error.errno.rawValue, message: "\(error)"))
            }
        case .hostname:
            reply(context, id, .text(configuration.target.hostname()))
        case .stat(let path, let follow):
            watch(path, following: follow, context: context)
            reply(context, id, target.stat(path, followSymlinks: follow))
        case .access(let path, let mode):
            watch(path, following: true, context: context)
            reply(context, id, target.access(path, mode: mode))
        case .readlink(let path):
            watch(path, following: false, context: context)
            reply(context, id, target.readlink(path))
        case .watch:
            startWatching(id, context: context)
        case .ping:
            reply(context, id, .done)
        case .resolve(let server, let questions):
            resolve(id, server: server, questions: questions, context: context)
        case .datagrams(let family):
            openDatagrams(id, family: family, context: context)
        case .connect, .takeIncoming, .listen:
            break  // served in channelRead
        case .socket, .connectionEvents, .stolenListener:
            reply(
                context, id,
                .failure(errno: EOPNOTSUPP, message: "sockets are passed on the socket channel (docs/protocol.md)"))
        case .open(let path, let flags, let mode):
            switch OpenIntent(flags: flags) {
            case .read:
                watch(path, following: flags & O_NOFOLLOW == 0, context: context)
                openForReading(id, path: path, flags: flags, context: context)
            case .stream: openForWriting(id, path: path, flags: flags, mode: mode, context: context)
            case .readWrite:
                switch target.openForReadWrite(path, flags: flags, mode: mode) {
                case .failure(let error): reply(context, id, error.response)
                case .success(let (fd, metadata)): stream(fd, metadata, id: id, context: context)
                }
            }
        }
    }

    func openForReading(_ id: UInt32, path: [UInt8], flags: Int32, context: ChannelHandlerContext) {
        switch target.openForReading(path, flags: flags) {
        case .failure(let response):
            reply(context, id, response)
        case .directory(let fd, let metadata):
            switch TargetRoot.entries(of: fd) {  // closes fd
            case .failure(let error): reply(context, id, error.response)
            case .success(let entries):
                context.write(wrapOutboundOut(.response(id: id, .opened(metadata))), promise: nil)
                for start in stride(from: 0, to: entries.count, by: Frame.chunkSize) {
                    let piece = Array(entries[start..<min(start + Frame.chunkSize, entries.count)])
                    context.write(wrapOutboundOut(.chunk(id: id, piece)), promise: nil)
                }
                context.writeAndFlush(wrapOutboundOut(.end(id: id)), promise: nil)
            }
        case .file(let fd, let metadata):
            stream(fd, metadata, id: id, context: context)
        }
    }

    /// Answers `opened` and streams the file's content: here when it fits in one chunk, else from the pool.
    func stream(
        _ fd: SystemPackage.FileDescriptor, _ metadata: FileMetadata, id: UInt32, context: ChannelHandlerContext
    ) {
        context.write(wrapOutboundOut(.response(id: id, .opened(metadata))), promise: nil)
        let stream = FileStream(fd: fd, id: id, channel: context.channel, cancelled: cancelled)
        if metadata.size < UInt64(Frame.chunkSize) {
            // Small: read it here, in one chunk (or several, if it grew since the stat).
            stream.runInline(context: context, bufferSize: Int(metadata.size) + 1)
        } else {
            context.flush()
            pool.submit { _ in stream.run() }
        }
    }

    func openForWriting(_ id: UInt32, path: [UInt8], flags: Int32, mode: UInt32, context: ChannelHandlerContext) {
        switch target.openForWriting(path, flags: flags, mode: mode) {
        case .failure(let error): reply(context, id, error.response)
        case .success(let (fd, metadata)):
            uploads[id] = Upload(fd: fd)
            reply(context, id, .opened(metadata))
        }
    }

    func write(_ bytes: [UInt8], to id: UInt32, context: ChannelHandlerContext) {
        guard let upload = uploads[id] else { return }  // failed earlier, or cancelled
        do {
            _ = try upload.fd.writeAll(bytes)
        } catch {
            uploads[id] = nil
            try? upload.fd.close()
            reply(
                context, id,
                .failure(errno: (error as? Errno ?? .ioError).rawValue, message: "writing in the pod failed"))
        }
    }

    func finishUpload(_ id: UInt32, context: ChannelHandlerContext) {
        guard let upload = uploads.removeValue(forKey: id) else { return }
        do {
            try upload.fd.close()
            reply(context, id, .done)
        } catch {
            reply(
                context, id,
                .failure(errno: (error as? Errno ?? .ioError).rawValue, message: "closing the file in the pod failed"))
        }
    }
}

/// Streams an open file to the client as chunks and an end, then closes it.
struct FileStream: Sendable {
    let fd: SystemPackage.FileDescriptor
    let id: UInt32
    let channel: any Channel
    let cancelled: CancelledStreams

    enum Step {
        case chunk([UInt8]), end, failure(Errno)
    }

    func next(_ buffer: inout [UInt8]) -> Step {
        do {
            let count = try buffer.withUnsafeMutableBytes { try fd.read(into: $0, retryOnInterrupt: true) }
            return count == 0 ? .end : .chunk(Array(buffer[..<count]))
        } catch {
            return .failure(error as? Errno ?? .ioError)
        }
    }

    static func message(_ step: Step, id: UInt32) -> Message {
        switch step {
        case .chunk(let bytes): .chunk(id: id, bytes)
        case .end: .end(id: id)
        case .failure(let errno):
            .response(id: id, .failure(errno: errno.rawValue, message: "reading in the pod failed"))
        }
    }

    /// On the event loop: the whole (small) file now. `bufferSize` is one more than the size fstat gave, so
    /// that one read normally gets the content and the next one the end.
    func runInline(context: ChannelHandlerContext, bufferSize: Int) {
        defer { try? fd.close() }
        var buffer = [UInt8](repeating: 0, count: min(bufferSize, Frame.chunkSize))
        while true {
            let step = next(&buffer)
            if case .chunk = step {
                context.write(NIOAny(Self.message(step, id: id)), promise: nil)
                continue
            }
            context.writeAndFlush(NIOAny(Self.message(step, id: id)), promise: nil)
            return
        }
    }

    /// On a pool thread: a chunk at a time, waiting for the one before last to reach the socket, so a large
    /// file never piles up in memory and other responses interleave.
    func run() {
        defer { try? fd.close() }
        var buffer = [UInt8](repeating: 0, count: Frame.chunkSize)
        var previous: EventLoopFuture<Void>?
        while !cancelled.ids.withLock({ $0.remove(id) != nil }) {
            let step = next(&buffer)
            let written = channel.writeAndFlush(Self.message(step, id: id))
            guard case .chunk = step else { return }
            do {
                try previous?.wait()
            } catch {
                return  // the connection is gone
            }
            previous = written
        }
    }
}

/// Streams the client no longer wants, shared with the pool threads that stream.
final class CancelledStreams: Sendable {
    let ids = Mutex<Set<UInt32>>([])
}

/// The session's file cache, kept true from here (FileWatches): what the session asks about is watched before
/// it is answered, so a change after the answer is always told.
extension SessionHandler {
    func startWatching(_ id: UInt32, context: ChannelHandlerContext) {
        guard let watches else {
            return reply(context, id, .failure(errno: ENOSYS, message: "this agent cannot watch files (no inotify)"))
        }
        watchRequest = id
        let channel = context.channel
        watches.listen(session: number) { paths in
            channel.writeAndFlush(Message.response(id: id, .invalidated(paths)), promise: nil)
        }
        reply(context, id, .done)
    }

    /// Watches `path` for a session that keeps answers; when it cannot, says so before the answer goes out.
    func watch(_ path: [UInt8], following: Bool, context: ChannelHandlerContext) {
        guard let request = watchRequest, let watches else { return }
        let object = try? target.lookup(path, flags: GNU.openPath | (following ? 0 : O_NOFOLLOW)).get()
        defer { try? object?.close() }
        let reason: String?
        switch entriesDeciding(path) {
        case .failure(let error): reason = "its directory cannot be opened in the pod (\(error))"
        case .success(let directory):
            defer { try? directory.close() }
            reason = watches.watch(path, object: object, directory: directory, session: number)
        }
        if let reason {
            context.write(wrapOutboundOut(.response(id: request, .unwatched(path: path, reason: reason))), promise: nil)
        }
    }

    /// The directory whose entries decide what `path` names: the one it is named in or, where that is missing
    /// (a program probing paths that do not exist), the nearest ancestor that exists, where the missing part
    /// would be created.
    private func entriesDeciding(_ path: [UInt8]) -> Result<SystemPackage.FileDescriptor, TargetRoot.PodError> {
        var directory = path
        while true {
            directory =
                directory.lastIndex(of: UInt8(ascii: "/")).map { Array(directory[..<max($0, 1)]) } ?? [
                    UInt8(ascii: "/")
                ]
            let found = target.lookup(directory, flags: GNU.openPath | O_DIRECTORY)
            guard case .failure(let error) = found, case .failure(let errno, _) = error.response,
                errno == ENOENT || errno == ENOTDIR, directory != [UInt8(ascii: "/")]
            else { return found }
        }
    }
}
