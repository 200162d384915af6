import CSysmirror
import LinuxSystem
import UserNotification

#if canImport(Glibc)
    import Glibc
#endif

/// One kernel feature from design.md's table, and whether this kernel has it.
public struct KernelFeature: Sendable, Equatable {
    public enum ID: Sendable, Equatable {
        case userNotification, continueFlag, pidfd, addfd, addfdSend, waitKillableRecv, syncWakeUp, openat2
    }

    public let id: ID
    public let name: String
    public let since: String
    public let use: String
    public let present: Bool
    /// trace cannot run without it.
    public let required: Bool
}

/// Which of the kernel features sysmirror relies on this kernel has, found by asking it, not by version.
public enum KernelFeatures {
    /// Probes on a live listener: an answer for an id that does not exist fails with ENOENT where the kernel
    /// understands the request, and with EINVAL where it does not.
    public static func probe(_ program: SpawnedProgram) -> [KernelFeature] {
        let fd = program.listener.descriptor.rawValue
        let bogus: UInt64 = 0xffff_ffff_ffff_fff0
        func understood(_ result: Int32) -> Bool { result == 0 || (result == -1 && errno == ENOENT) }

        var continued = seccomp_notif_resp(
            id: bogus, val: 0, error: 0, flags: UInt32(SECCOMP_USER_NOTIF_FLAG_CONTINUE))
        var addfd = seccomp_notif_addfd(id: bogus, flags: 0, srcfd: UInt32(fd), newfd: 0, newfd_flags: 0)
        var addfdSend = seccomp_notif_addfd(
            id: bogus, flags: UInt32(SECCOMP_ADDFD_FLAG_SEND), srcfd: UInt32(fd), newfd: 0, newfd_flags: 0)
        let openat2 = sysm_openat2_probe() == -1 && errno != ENOSYS

        return [
            KernelFeature(
                id: .userNotification, name: "seccomp user notification", since: "5.0", use: "the core loop",
                present: true, required: true),
            KernelFeature(
                id: .continueFlag, name: "SECCOMP_USER_NOTIF_FLAG_CONTINUE", since: "5.5", use: "local decisions",
                present: understood(sysm_notif_send(fd, &continued)), required: true),
            KernelFeature(
                id: .pidfd, name: "pidfd_open / pidfd_getfd", since: "5.3 / 5.6",
                use: "taking the listener and the program's fds",
                present: true, required: true),  // the listener itself came through pidfd_getfd
            KernelFeature(
                id: .addfd, name: "SECCOMP_IOCTL_NOTIF_ADDFD", since: "5.9", use: "injecting remote files and sockets",
                present: understood(sysm_notif_addfd(fd, &addfd)), required: true),
            KernelFeature(
                id: .addfdSend, name: "SECCOMP_ADDFD_FLAG_SEND", since: "5.14",
                use: "inject-and-return without an fd leak",
                present: understood(sysm_notif_addfd(fd, &addfdSend)), required: false),
            KernelFeature(
                id: .waitKillableRecv, name: "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV", since: "5.19",
                use: "signals do not cancel a call being served", present: program.waitsKillably, required: false),
            KernelFeature(
                id: .syncWakeUp, name: "SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP", since: "6.6",
                use: "speed: wake on the same CPU",
                present: (try? program.listener.enableSynchronousWakeUp()) != nil, required: false),
            KernelFeature(
                id: .openat2, name: "openat2 RESOLVE_IN_ROOT", since: "5.6",
                use: "the agent keeps paths inside the pod's root",
                present: openat2, required: false),
        ]
    }

    /// Whether `id` is among the present features.
    public static func has(_ id: KernelFeature.ID, in features: [KernelFeature]) -> Bool {
        features.contains { $0.id == id && $0.present }
    }

    /// The first required feature missing, if any.
    public static func missingRequirement(_ features: [KernelFeature]) -> KernelFeature? {
        features.first { $0.required && !$0.present }
    }
}
