import CSysmirror
import LinuxSystem
import Logging
import Synchronization
import SyscallDecoding
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Where trace events go. The receiving thread only appends an event under a lock; a writer thread
/// formats and writes them in batches, so the program never waits on formatting or on the log's disk.
public final class TraceLog: Sendable {
    private let sink: FileDescriptor?
    private let format: TraceFormat
    private let closesSink: Bool
    private let table: SyscallTable
    /// Events as bytes (TraceRecord): nothing the receiving thread allocates is freed by the writer.
    private let pending = Mutex<[UInt8]>(TraceLog.emptyBuffer())
    /// The writer thread, and the eventfd that wakes it early when the log closes; none without a sink.
    private let writer = Mutex<Writer?>(nil)

    private struct Writer: ~Copyable {
        let thread: ThreadHandle
        let wakeUp: FileDescriptor
    }
    private let logger: Logger
    /// The CPU the receiving thread last recorded on; the writer keeps off it (see runWriter).
    private let recorderCPU = Atomic<Int>(-1)
    static let interval: Int32 = 20  // milliseconds between batches

    /// Room for a batch at a high call rate (100,000 calls a second is about 150 KB per batch), so that an
    /// append on the receiving thread does not grow and copy the buffer.
    static func emptyBuffer() -> [UInt8] {
        var buffer: [UInt8] = []
        buffer.reserveCapacity(1 << 20)
        return buffer
    }

    /// A log writing `format` to `sink`; nil discards events (`--quiet` without `--log`).
    public init(
        sink: FileDescriptor?, format: TraceFormat, closesSink: Bool, table: SyscallTable, logger: Logger
    ) throws {
        self.sink = sink
        self.table = table
        self.format = format
        self.closesSink = closesSink
        self.logger = logger
        guard let sink else { return }
        let wakeUp = FileDescriptor(rawValue: try systemCall("eventfd") { sysm_eventfd() })
        var started: Writer? = Writer(
            thread: try ThreadHandle.start(name: "sysmirror-log") { [self] in runWriter(to: sink, wakeUp: wakeUp) },
            wakeUp: wakeUp)
        writer.withLock { $0 = started.take() }
    }

    /// Hot path: one lock and a copy of the event's bytes.
    public func record(_ event: TraceEvent) {
        guard sink != nil else { return }
        pending.withLock { TraceRecord.append(event, to: &$0) }
        recorderCPU.store(Int(sysm_current_cpu()), ordering: .relaxed)  // glibc reads it from rseq: no syscall
    }

    /// Writes what is pending and stops the writer.
    public func close() {
        guard let writer = writer.withLock({ $0.take() }) else { return }
        let wakeUp = writer.wakeUp
        var one: UInt64 = 1
        _ = write(wakeUp.rawValue, &one, 8)  // an eventfd write fails only on overflow
        writer.thread.join()
        try? wakeUp.close()
        if closesSink { try? sink?.close() }
    }

    private func runWriter(to sink: FileDescriptor, wakeUp: FileDescriptor) {
        var writeFailed = false
        var done = false
        var records = Self.emptyBuffer()
        var avoidedCPU = -1
        var output = LineBuffer(capacity: 1 << 20)
        while !done {
            var entry = pollfd(fd: wakeUp.rawValue, events: Int16(POLLIN), revents: 0)
            done = poll(&entry, 1, Self.interval) == 1
            // Swap buffers: the receiving thread appends into storage that already has capacity.
            records.removeAll(keepingCapacity: true)
            pending.withLock { swap(&$0, &records) }
            guard !records.isEmpty, !writeFailed else { continue }
            // The receiving thread and the program share a CPU (SYNC_WAKE_UP); formatting there would take
            // time from the program whenever the other CPUs are busy.
            let cpu = recorderCPU.load(ordering: .relaxed)
            if cpu >= 0 && cpu != avoidedCPU {
                _ = sysm_avoid_cpu(Int32(cpu))
                avoidedCPU = cpu
            }
            output.removeAll()
            for event in TraceRecord.decode(records, table: table) { format.append(event, to: &output) }
            do {
                _ = try sink.writeAll(output.bytes)
            } catch {
                // A closed pipe or a full disk must not stop the program: the log stops here, and says so.
                writeFailed = true
                logger.warning("the trace log could not be written (\(error)); the program goes on without it")
            }
        }
    }
}
