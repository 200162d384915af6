import AgentLink
import AgentProtocol
import LinuxSystem
import UserNotification

#if canImport(Glibc)
    import Glibc
#endif

/// Sends what a descriptor holds to the pod as the chunks of upload `id`, then its end, on the serving event
/// loop: a pipe the program writes into (read as it becomes readable, until every writer has closed it), or
/// a copy written back (a file, read piece by piece). It pauses while the link's queue is full, so a fast
/// writer moves at the link's pace; no thread of its own.
final class UploadPump: @unchecked Sendable {  // created on any thread, then touched only on `loop`
    private let loop: EventLoop
    private let source: SharedDescriptor
    private let isPipe: Bool
    private let id: UInt32
    private let client: AgentClient
    private var registration: EventLoop.Registration?
    /// How long a full queue pauses the pump.
    static let pause: UInt64 = 1_000_000

    private init(loop: EventLoop, source: SharedDescriptor, isPipe: Bool, id: UInt32, client: AgentClient) {
        self.loop = loop
        self.source = source
        self.isPipe = isPipe
        self.id = id
        self.client = client
    }

    /// Starts pumping `source` (a non-blocking pipe's read end, or a file) from any thread.
    static func start(on loop: EventLoop, _ source: SharedDescriptor, isPipe: Bool, id: UInt32, client: AgentClient) {
        let pump = UploadPump(loop: loop, source: source, isPipe: isPipe, id: id, client: client)
        loop.execute { pump.resume() }
    }

    private func resume() {
        guard isPipe else { return step() }
        do {
            registration = try loop.register(source.raw, for: .readable) { [self] _ in step() }
        } catch {
            end()
        }
    }

    /// Reads and sends one piece, then waits for the next (a pipe: its readiness; a file: the loop's next turn).
    private func step() {
        guard client.canTakeMore else {
            stopWaiting()
            loop.schedule(in: Self.pause) { [self] in resume() }
            return
        }
        let piece: [UInt8]
        do throws(SystemCallError) {
            piece = try Sockets.read(source.raw, upTo: Frame.chunkSize)
        } catch  where error.errno == .resourceTemporarilyUnavailable {
            return  // a pipe with nothing yet: its readiness calls again
        } catch {
            return end()  // a failed read ends the upload where it is, as the end of the file would
        }
        guard !piece.isEmpty else { return end() }
        do {
            try client.upload(id, piece)
        } catch {
            return stopWaiting()  // the link is gone; the request's handler reports it
        }
        if !isPipe { loop.schedule(in: 0) { [self] in step() } }
    }

    private func end() {
        stopWaiting()
        try? client.upload(id, nil)  // a link already gone: the request's handler reports it
    }

    private func stopWaiting() {
        if let registration { loop.deregister(registration) }
        registration = nil
    }
}
