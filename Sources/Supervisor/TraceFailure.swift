import LinuxSystem
import SystemPackage

/// Why `trace` could not run the program: the message a user sees, and the exit status.
public enum TraceFailure: Error, Equatable {
    case commandNotFound(String)
    case cannotExecute(String, SpawnStage, Errno)
    case filter(String)
    case kernelLacks(KernelFeature)
    /// The agent could not be reached, refused the session, or failed at its start.
    case agent(String)
    case internalError(String)

    /// 127 when the program does not exist, 126 when it cannot be executed (as shells do), 1 otherwise.
    public var exitStatus: Int32 {
        switch self {
        case .commandNotFound: 127
        case .cannotExecute(_, .exec, .noSuchFileOrDirectory): 127
        case .cannotExecute(_, .exec, _): 126
        case .cannotExecute, .filter, .kernelLacks, .agent, .internalError: 1
        }
    }

    /// One or two lines, saying what happened and what to do.
    public var message: String {
        switch self {
        case .commandNotFound(let name):
            return "\(name): command not found"
        case .cannotExecute(let path, .exec, let errno):
            switch errno {
            case .noSuchFileOrDirectory: return "\(path): No such file or directory"
            case .permissionDenied where ExecutableLookup.isDirectory(path): return "\(path): Is a directory"
            case .permissionDenied: return "\(path): Permission denied"
            case .execFormatError: return "\(path): cannot execute binary file: Exec format error"
            default: return "\(path): \(errno)"
            }
        case .cannotExecute(_, .seccomp, .resourceBusy):
            return """
                cannot install sysmirror's filter: this process is already under a seccomp user-notify filter \
                (sysmirror inside sysmirror, or a container runtime that uses one). Only one listener is allowed \
                per process; run sysmirror outside the other supervisor.
                """
        case .cannotExecute(_, .seccomp, .invalidArgument):
            return """
                this kernel refused the filter (EINVAL): it lacks seccomp user notification (Linux 5.0+) or \
                a flag sysmirror needs. Run `sysmirror doctor` to see which kernel features are present.
                """
        case .cannotExecute(_, .seccomp, let errno) where errno == .permissionDenied || errno == .notPermitted:
            return """
                seccomp filters are not permitted here (\(errno)): a container or security policy forbids them. \
                Allow seccomp for this process (for example a runtime's seccomp profile), then try again.
                """
        case .cannotExecute(_, .noNewPrivileges, let errno):
            return "could not set no_new_privs, which a filter needs without root: \(errno)"
        case .cannotExecute(_, let stage, let errno):
            return "could not start the program (\(stage)): \(errno)"
        case .filter(let reason):
            return "could not build the seccomp filter: \(reason)"
        case .kernelLacks(let feature):
            return """
                this kernel lacks \(feature.name) (Linux \(feature.since)+), which sysmirror needs for \(feature.use). \
                Run `sysmirror doctor` for the full list.
                """
        case .agent(let reason):
            return "\(reason) The program was not started."
        case .internalError(let reason):
            return reason
        }
    }
}
