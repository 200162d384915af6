import AgentLink
import AgentProtocol
import CSysmirror
import LinuxSystem
import Synchronization
import SystemPackage
import UserNotification

#if canImport(Glibc)
    import Glibc
#endif

/// A remote open in progress: what the program asked, and the request that serves it.
class RemoteOpen: @unchecked Sendable {  // `id` is set by `prepare`, before any reply can arrive
    let path: [UInt8]
    let flags: Int32
    let answer: PendingCall
    let context: OpenContext
    var id: UInt32 = 0

    init(path: [UInt8], flags: Int32, answer: PendingCall, context: OpenContext) {
        self.path = path
        self.flags = flags
        self.answer = answer
        self.context = context
    }
}

/// A remote open for reading, as its replies arrive on the link's thread: the metadata, then the content
/// (into a `ContentFile`) or the entries (into a placeholder directory), then the end, when the program gets
/// its fd.
final class Download: RemoteOpen, @unchecked Sendable {  // touched only on the link's thread
    private var content: ContentFile?
    private var entries: [UInt8]?
    private var chunks = 0
    private var failure: SystemCallError?
    /// Set for a read-only open whose content the cache may keep.
    var ticket: FileCache.Ticket?
    /// The pod file's, from the agent's first answer.
    private var metadata: FileMetadata?
    /// Checked every so many chunks: a program killed during a large download stops the stream.
    static let liveCheckInterval = 16

    func receive(_ reply: Reply) -> ReplyDisposition {
        switch reply {
        case .response(.opened(let metadata)):
            self.metadata = metadata
            if metadata.isDirectory {
                entries = []
            } else {
                do {
                    content = try ContentFile(name: path, size: metadata.size, scratch: context.scratch)
                } catch {
                    failure = error
                }
            }
            return .expectingMore
        case .chunk(let bytes):
            chunks += 1
            if chunks % Self.liveCheckInterval == 0 && !answer.listener.isPending(answer.notification.id) {
                context.client.cancel(id)
                content?.close()
                answer.gone("the call went away during the transfer")
                return .complete
            }
            if entries != nil {
                entries!.append(contentsOf: bytes)
            } else if let content, failure == nil {
                do { try content.append(bytes) } catch { failure = error }
            }
            return .expectingMore
        case .end:
            finish()
            return .complete
        case .response(.failure(let errno, let message)):
            content?.close()
            // A path the pod does not have is kept missing, as a stat's answer would be.
            if let ticket {
                context.cache?.keepStatus(path, following: true, .failure(errno: errno, message: message), ticket)
            }
            answer.fail(errno, note: message.isEmpty ? nil : message)
            return .complete
        case .response(let other):
            content?.close()
            answer.unexpected(other)
            return .complete
        case .linkFailure(let reason):
            content?.close()
            answer.linkFailed(reason, warning: context.linkWarning)
            return .complete
        }
    }

    func finish() {
        if let entries {
            do {
                let decoded = try DirectoryEntryCodec.decode(entries)
                if let ticket { context.cache?.keepEntries(path, decoded, ticket) }
                switch context.directories.open(path, entries: decoded) {
                case .success(let fd): answer.install(fd: fd, flags: flags)
                case .failure(let errno):
                    answer.fail(errno.rawValue, note: "could not make the placeholder directory: \(errno)")
                }
            } catch {
                answer.fail(EIO, note: "\(error)")
            }
        } else if let content {
            if let failure {
                content.close()
                // ENOSPC/ENOMEM holding the content: the program sees what it would for a full disk.
                answer.fail(failure.errno.rawValue, note: "could not hold the file's content: \(failure)")
            } else if OpenIntent(flags: flags) == .readWrite && OpenIntent.writesBack(flags) {
                context.writes.startWriteBack(content, path: path, flags: flags, answer)
            } else {
                let matched = metadata.map { (try? content.flush(matching: $0)) != nil } ?? false
                if let cache = context.cache, let ticket, let metadata, matched, let kept = try? content.reopen(O_RDONLY) {
                    cache.keepContent(path, kept, size: Int(metadata.size), ticket)
                }
                answer.install(content: content, flags: flags)
            }
        } else {
            answer.fail(failure?.errno.rawValue ?? EIO, note: failure.map { "\($0)" } ?? "the agent sent no content")
        }
    }
}

/// A remote open for writing (`--fs-mode write`, `OpenIntent.stream`): the program gets the write end of a
/// pipe; a thread of its own streams what arrives to the file opened in the pod, and ends the stream when
/// every writer has closed the pipe.
final class Upload: RemoteOpen, PendingWrite, @unchecked Sendable {  // `id` is set by `prepare`; the rest is locked
    /// The pipe's read end, watched for POLLHUP (let go when the upload ends).
    private let reader = Mutex<SharedDescriptor?>(nil)
    private let finished = FinishSignal()

    var name: String { String(decoding: path, as: UTF8.self) }

    var writersClosed: Bool {
        reader.withLock { reader in
            guard let reader else { return false }
            return readiness(of: reader.raw, for: 0) & Int16(POLLHUP) != 0
        }
    }

    func whenFinished(_ body: @escaping @Sendable () -> Void) { finished.whenFinished(body) }

    func finish() {
        reader.withLock { $0 = nil }
        finished.fire()
    }

    func receive(_ reply: Reply) -> ReplyDisposition {
        switch reply {
        case .response(.opened):
            do throws(SystemCallError) {
                var ends: (Int32, Int32) = (-1, -1)
                _ = try systemCall("pipe2") {
                    withUnsafeMutableBytes(of: &ends) { sysm_pipe($0.baseAddress!.assumingMemoryBound(to: Int32.self)) }
                }
                let read = SharedDescriptor(OwnedDescriptor(taking: ends.0))
                let writer = OwnedDescriptor(taking: ends.1)
                // The read end is sysmirror's alone (a pipe's ends are separate open files): the loop reads it.
                try read.descriptor.setNonBlocking(true)
                if flags & O_NONBLOCK != 0 { try writer.setNonBlocking(true) }
                // The pump reads its own duplicate, so that `finish` may let go of the watched end at any time.
                let pumped = SharedDescriptor(try read.descriptor.duplicate())
                reader.withLock { $0 = read }
                UploadPump.start(on: context.writes.loop, pumped, isPipe: true, id: id, client: context.client)
                answer.installWritable(fd: writer, flags: flags, note: "written in the pod through a pipe")
            } catch {
                return abandon(errno: error.errno.rawValue, "could not make the pipe for the upload: \(error)")
            }
            return .waitingOnClient
        case .response(.done):
            context.writes.ended(self)
            return .complete
        case .response(.failure(let errno, let message)):
            if isInstalled {
                context.writes.logger.error("writing \(name) in the pod failed: \(Errno(rawValue: errno)) \(message)")
            } else {
                answer.fail(errno, note: message.isEmpty ? nil : message)
            }
            context.writes.ended(self)
            return .complete
        case .linkFailure(let reason):
            if isInstalled {
                context.writes.logger.error("writing \(name) in the pod failed: \(reason)")
            } else {
                answer.linkFailed(reason, warning: context.linkWarning)
            }
            context.writes.ended(self)
            return .complete
        case .response, .chunk, .end:
            return .waitingOnClient
        }
    }

    private var isInstalled: Bool { reader.withLock { $0 != nil } }

    private func abandon(errno: Int32, _ note: String) -> ReplyDisposition {
        answer.fail(errno, note: note)
        context.client.cancel(id)
        context.writes.ended(self)
        return .complete
    }
}
