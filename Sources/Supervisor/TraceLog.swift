import CSysmirror
import LinuxSystem
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
    /// Wakes the writer early when the log is closed.
    private let wakeUp: FileDescriptor
    private let writer = Mutex<ThreadHandle?>(nil)
    private let writeFailed = Atomic<Bool>(false)
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
    public init(sink: FileDescriptor?, format: TraceFormat, closesSink: Bool, table: SyscallTable) throws {
        self.sink = sink
        self.table = table
        self.format = format
        self.closesSink = closesSink
        self.wakeUp = FileDescriptor(rawValue: try systemCall("eventfd") { sysm_eventfd() })
        let handle = try ThreadHandle.start(name: "sysmirror-log") { [self] in runWriter() }
        writer.withLock { $0 = handle }
    }

    /// Hot path: one lock and a copy of the event's bytes.
    public func record(_ event: TraceEvent) {
        guard sink != nil else { return }
        pending.withLock { TraceRecord.append(event, to: &$0) }
        recorderCPU.store(Int(sysm_current_cpu()), ordering: .relaxed)  // glibc reads it from rseq: no syscall
    }

    /// Writes what is pending and stops the writer.
    public func close() {
        guard
            let handle = writer.withLock({ current in
                defer { current = nil }; return current
            })
        else { return }
        var one: UInt64 = 1
        _ = write(wakeUp.rawValue, &one, 8)
        handle.join()
        try? wakeUp.close()
        if closesSink { try? sink?.close() }
    }

    private func runWriter() {
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
            guard let sink, !records.isEmpty, !writeFailed.load(ordering: .relaxed) else { continue }
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
                // A closed pipe or full disk must not stop the program: drop the log from here on.
                writeFailed.store(true, ordering: .relaxed)
            }
        }
    }
}
