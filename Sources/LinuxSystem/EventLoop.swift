import CSysmirror
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// One thread and one epoll instance for long-lived work on many descriptors: relays, copies, waits, pumps,
/// timers. Work is a registration (a descriptor and a handler) or a timer, never a thread, so the number of
/// threads stays the same however many connections there are.
///
/// Other threads hand work over with `execute`; everything else (`register`, `change`, `deregister`,
/// `schedule`, `cancel`) is called on the loop's own thread, from a task or a handler. Handlers must not
/// block: every descriptor they touch is non-blocking.
public final class EventLoop: @unchecked Sendable {  // `handlers` and `timers` are touched only on the loop's thread
    /// What a registration waits for, and what a handler is told.
    public struct Events: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let readable = Events(rawValue: UInt32(EPOLLIN.rawValue))
        public static let writable = Events(rawValue: UInt32(EPOLLOUT.rawValue))
        /// Told only: the peer closed, or the descriptor failed (epoll always reports these).
        public static let hangUp = Events(rawValue: UInt32(EPOLLHUP.rawValue))
        public static let error = Events(rawValue: UInt32(EPOLLERR.rawValue))
        /// Asked only: after one call the registration is quiet until `rearm`.
        public static let oneShot = Events(rawValue: UInt32(EPOLLONESHOT.rawValue))
    }

    /// Names a registration, for `change` and `deregister`. Never reused.
    public struct Registration: Hashable, Sendable {
        fileprivate let token: UInt64
        fileprivate let fd: Int32
    }

    /// Names a timer, for `cancel`. Never reused.
    public struct Timer: Hashable, Sendable { fileprivate let token: UInt64 }

    private let epoll: OwnedDescriptor
    /// Wakes the loop when a task is handed over or the loop is to stop.
    private let wakeUp: OwnedDescriptor
    private let tasks = Mutex<(queued: [@Sendable () -> Void], stopping: Bool)>(([], false))
    private let thread = Mutex<ThreadHandle?>(nil)
    /// The loop thread's id, for `inLoop`.
    private let loopThread = Atomic<UInt>(0)
    private var handlers: [UInt64: (Events) -> Void] = [:]
    private var timers: [UInt64: (deadline: UInt64, task: () -> Void)] = [:]
    /// No timer is due before this (a cancelled one may have been the earliest: then a wake finds none due).
    private var nextDeadline = UInt64.max
    private var nextToken: UInt64 = 1
    /// Token 0 in epoll's data is the wake-up.
    private static let wakeUpToken: UInt64 = 0

    /// Starts the loop's thread.
    public init(name: String) throws(SystemCallError) {
        epoll = OwnedDescriptor(taking: try systemCall("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) })
        wakeUp = OwnedDescriptor(taking: try systemCall("eventfd") { sysm_eventfd() })
        var event = epoll_event(events: UInt32(EPOLLIN.rawValue), data: epoll_data_t(u64: Self.wakeUpToken))
        _ = try systemCall("epoll_ctl(ADD)") { epoll_ctl(epoll.raw, EPOLL_CTL_ADD, wakeUp.raw, &event) }
        var started: ThreadHandle? = try ThreadHandle.start(name: name) { [self] in run() }
        thread.withLock { $0 = started.take() }
    }

    /// Whether the caller is the loop's thread.
    public var inLoop: Bool { loopThread.load(ordering: .relaxed) == UInt(pthread_self()) }

    /// Runs `task` on the loop's thread, after what was handed over before it. From any thread; a task handed
    /// over after `close` is dropped.
    public func execute(_ task: @escaping @Sendable () -> Void) {
        let wasEmpty = tasks.withLock { tasks -> Bool in
            guard !tasks.stopping else { return false }
            defer { tasks.queued.append(task) }
            return tasks.queued.isEmpty
        }
        if wasEmpty { signal() }
    }

    /// Calls `handler` on the loop's thread whenever `fd` is ready for `events` (level-triggered), until
    /// `deregister`. The descriptor stays its owner's, who deregisters it before closing it.
    public func register(_ fd: Int32, for events: Events, _ handler: @escaping (Events) -> Void) throws(SystemCallError)
        -> Registration
    {
        precondition(inLoop, "EventLoop.register called off the loop's thread")
        let token = nextToken
        nextToken += 1
        var event = epoll_event(events: events.rawValue, data: epoll_data_t(u64: token))
        _ = try systemCall("epoll_ctl(ADD)") { epoll_ctl(epoll.raw, EPOLL_CTL_ADD, fd, &event) }
        handlers[token] = handler
        return Registration(token: token, fd: fd)
    }

    /// Calls `body` once, on the loop's thread, when `fd` is first ready for `events` (a handshake that
    /// ends, say); at once with `.error` when the descriptor cannot be registered.
    public func whenReady(_ fd: Int32, for events: Events, _ body: @escaping (Events) -> Void) {
        var registration: Registration?
        registration = try? register(fd, for: events) { [self] ready in
            if let registration { deregister(registration) }
            body(ready)
        }
        if registration == nil { body(.error) }
    }

    /// What `registration` waits for from now on (none: it stays registered but quiet).
    public func change(_ registration: Registration, to events: Events) {
        precondition(inLoop, "EventLoop.change called off the loop's thread")
        var event = epoll_event(events: events.rawValue, data: epoll_data_t(u64: registration.token))
        // Fails only for a descriptor that is not registered: a programming error the handler would show.
        _ = epoll_ctl(epoll.raw, EPOLL_CTL_MOD, registration.fd, &event)
    }

    /// From any thread: a `oneShot` registration that fired waits for `events` again. epoll_ctl is safe beside
    /// the loop's wait, so the loop is not woken for it; the caller makes sure the registration is still in
    /// place (a number deregistered and reused would be another's).
    public func rearm(_ registration: Registration, for events: Events) {
        var event = epoll_event(events: events.union(.oneShot).rawValue, data: epoll_data_t(u64: registration.token))
        // Fails only for a descriptor that is not registered: the caller's promise says it is.
        _ = epoll_ctl(epoll.raw, EPOLL_CTL_MOD, registration.fd, &event)
    }

    /// Stops calling the registration's handler; call before closing its descriptor.
    public func deregister(_ registration: Registration) {
        precondition(inLoop, "EventLoop.deregister called off the loop's thread")
        guard handlers.removeValue(forKey: registration.token) != nil else { return }
        // Fails only when the descriptor was closed already, which removed it from the epoll set too.
        _ = epoll_ctl(epoll.raw, EPOLL_CTL_DEL, registration.fd, nil)
    }

    /// Runs `task` on the loop's thread once, `nanoseconds` from now.
    @discardableResult
    public func schedule(in nanoseconds: UInt64, _ task: @escaping () -> Void) -> Timer {
        precondition(inLoop, "EventLoop.schedule called off the loop's thread")
        let token = nextToken
        nextToken += 1
        let deadline = Clock.monotonic() + nanoseconds
        timers[token] = (deadline, task)
        nextDeadline = min(nextDeadline, deadline)
        return Timer(token: token)
    }

    public func cancel(_ timer: Timer) {
        precondition(inLoop, "EventLoop.cancel called off the loop's thread")
        timers[timer.token] = nil
    }

    /// Stops the loop and waits for its thread; what is registered is let go (and its owners with it).
    public func close() {
        let first = tasks.withLock { tasks in
            defer { tasks.stopping = true }
            return !tasks.stopping
        }
        guard first else { return }
        signal()
        thread.withLock { $0.take() }?.join()
    }

    private func signal() {
        var one: UInt64 = 1
        _ = write(wakeUp.raw, &one, 8)  // an eventfd write fails only on overflow, which 2^64 wakes cannot reach
    }

    private func run() {
        loopThread.store(UInt(pthread_self()), ordering: .relaxed)
        var events = [epoll_event](repeating: epoll_event(), count: 64)
        while true {
            let (queued, stopping) = tasks.withLock { tasks in
                defer { tasks.queued = [] }
                return (tasks.queued, tasks.stopping)
            }
            if stopping { break }
            for task in queued { task() }
            let timeout = runDueTimers()
            let count = epoll_wait(epoll.raw, &events, Int32(events.count), timeout)
            guard count >= 0 else {
                if errno == EINTR { continue }
                preconditionFailure("epoll_wait: \(currentErrno())")  // EBADF/EFAULT/EINVAL: a broken loop
            }
            for event in events[..<Int(count)] {
                if event.data.u64 == Self.wakeUpToken {
                    var value: UInt64 = 0
                    _ = read(wakeUp.raw, &value, 8)  // resets the eventfd; the tasks are read under the lock
                } else if let handler = handlers[event.data.u64] {
                    handler(Events(rawValue: event.events))
                }
            }
        }
        handlers = [:]
        timers = [:]
    }

    /// Runs the timers due at this turn's start (one scheduled meanwhile waits for the next turn, so that a
    /// timer rescheduling itself cannot starve the descriptors); the milliseconds until the next one, or -1
    /// when none is set. Looks at the timers only when the earliest deadline has come: most turns have none.
    private func runDueTimers() -> Int32 {
        let start = Clock.monotonic()
        if nextDeadline <= start {
            let due = timers.filter { $0.value.deadline <= start }.sorted { $0.value.deadline < $1.value.deadline }
            for (token, timer) in due where timers.removeValue(forKey: token) != nil { timer.task() }
            nextDeadline = timers.values.map(\.deadline).min() ?? .max
        }
        guard nextDeadline != .max else { return -1 }
        let now = Clock.monotonic()
        return nextDeadline <= now ? 0 : Int32(min((nextDeadline - now + 999_999) / 1_000_000, 60_000))
    }
}

extension EventLoop {
    /// A descriptor's registration that waits for what its owner wants now, and nothing else: none while
    /// nothing is wanted (epoll would still report a hang-up, again and again), changed only when what is
    /// wanted changes (each change is a syscall). On the loop's thread only.
    public struct Interest {
        private var registration: Registration?
        private var events: Events = []

        public init() {}

        /// Waits for `wanted` on `fd` from now on, calling `handler` when it is ready.
        public mutating func want(
            _ wanted: Events, on fd: Int32, in loop: EventLoop, _ handler: @escaping (Events) -> Void
        ) throws(SystemCallError) {
            if let registration {
                if wanted.isEmpty {
                    loop.deregister(registration)
                    self.registration = nil
                } else if wanted != events {
                    loop.change(registration, to: wanted)
                }
            } else if !wanted.isEmpty {
                registration = try loop.register(fd, for: wanted, handler)
            }
            events = wanted
        }

        /// Waits for nothing more (before the descriptor closes).
        public mutating func end(in loop: EventLoop) {
            if let registration { loop.deregister(registration) }
            registration = nil
            events = []
        }
    }
}
