/// Where an intercepted call was served.
public enum Route: Sendable, Equatable {
    /// Ran on this machine, unchanged (SECCOMP_USER_NOTIF_FLAG_CONTINUE).
    case local
    /// Served by the agent in the pod.
    case remote
    /// Answered ENOENT by a rule.
    case notFound
    /// Answered with an error without running.
    case denied
    /// Answered from what the session kept of the pod's answers (the file cache), with no round trip.
    case cached

    /// The name the log uses: `local`, `remote`, `not_found`, `denied`, `cached`.
    public var name: String {
        switch self {
        case .local: "local"
        case .remote: "remote"
        case .notFound: "not_found"
        case .denied: "denied"
        case .cached: "cached"
        }
    }
}

/// What the program got back, as far as the supervisor knows it.
public enum Outcome: Sendable, Equatable {
    /// The kernel ran the call after the supervisor let it continue: the result is the kernel's, unseen here.
    case continued
    case returned(Int64)
    case failed(errno: Int32)
    /// The call was gone before it could be answered: a signal interrupted it (it may be restarted as a new
    /// call) or its thread died.
    case interrupted
}

/// One line of the trace log: a call, its route and its outcome.
public struct TraceEvent: Sendable, Equatable {
    /// Wall-clock time the notification arrived, in nanoseconds since the Unix epoch.
    public let time: UInt64
    /// The calling thread's id (for a single-threaded process, its pid).
    public let pid: Int32
    public let syscall: String
    /// The decoded arguments; nil for calls that are not decoded (another ABI).
    public let arguments: DecodedSyscall?
    public let route: Route
    public let outcome: Outcome
    /// Time from receiving the notification to answering it.
    public let durationNanos: UInt64
    /// Why the call was routed so, when that is not obvious.
    public let note: String?

    public init(
        time: UInt64, pid: Int32, syscall: String, arguments: DecodedSyscall?, route: Route, outcome: Outcome,
        durationNanos: UInt64, note: String? = nil
    ) {
        self.time = time
        self.pid = pid
        self.syscall = syscall
        self.arguments = arguments
        self.route = route
        self.outcome = outcome
        self.durationNanos = durationNanos
        self.note = note
    }
}
