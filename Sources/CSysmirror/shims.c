#define _GNU_SOURCE
#include "sysmirror_shims.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/vfs.h>
#include <sys/syscall.h>
#include <unistd.h>

int sysm_notif_recv(int listener, struct seccomp_notif *notification) {
    return ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, notification);
}

int sysm_notif_send(int listener, struct seccomp_notif_resp *response) {
    return ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, response);
}

int sysm_notif_id_valid(int listener, uint64_t id) {
    return ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id);
}

int sysm_notif_addfd(int listener, struct seccomp_notif_addfd *addfd) {
    return ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, addfd);
}

int sysm_notif_addfd_here(int listener, struct seccomp_notif_addfd *addfd, pid_t caller) {
    cpu_set_t here, callers;
    int cpu = sched_getcpu();
    CPU_ZERO(&here);
    if (cpu >= 0) CPU_SET(cpu, &here);
    int pinned = cpu >= 0 && sched_getaffinity(caller, sizeof callers, &callers) == 0
        && sched_setaffinity(caller, sizeof here, &here) == 0;
    int result = ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, addfd);
    int saved = errno;
    if (pinned) sched_setaffinity(caller, sizeof callers, &callers);
    errno = saved;
    return result;
}

int sysm_notif_set_flags(int listener, uint64_t flags) {
    return ioctl(listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS, flags);
}

int sysm_pidfd_open(pid_t pid, unsigned int flags) {
    return (int)syscall(SYS_pidfd_open, pid, flags);
}

int sysm_pidfd_getfd(int pidfd, int targetfd, unsigned int flags) {
    return (int)syscall(SYS_pidfd_getfd, pidfd, targetfd, flags);
}

int sysm_seccomp(unsigned int operation, unsigned int flags, void *args) {
    return (int)syscall(SYS_seccomp, operation, flags, args);
}

// openat2 with a NULL `how` fails with EFAULT where the kernel has it, and ENOSYS where it does not.
int sysm_openat2_probe(void) {
    return (int)syscall(SYS_openat2, -1, "", NULL, 24);
}

int sysm_openat2_in_root(int root, const char *path, uint64_t flags, uint64_t mode) {
    struct open_how how = {.flags = flags, .mode = mode, .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS};
    return (int)syscall(SYS_openat2, root, path, &how, sizeof how);
}

int sysm_setns(int fd, int type) {
    return setns(fd, type);
}

int sysm_become_child_subreaper(void) {
    return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
}

int sysm_memfd(const char *name) {
    return memfd_create(name, MFD_CLOEXEC);
}

int sysm_pipe(int ends[2]) {
    return pipe2(ends, O_CLOEXEC);
}

int sysm_eventfd(void) {
    return eventfd(0, EFD_CLOEXEC);
}

long sysm_filesystem_type(int fd) {
    struct statfs info;
    return fstatfs(fd, &info) == 0 ? (long)info.f_type : -1;
}

int sysm_current_cpu(void) {
    return sched_getcpu();
}

int sysm_avoid_cpu(int cpu) {
    cpu_set_t allowed;
    if (sched_getaffinity(getpid(), sizeof allowed, &allowed) != 0) return -1;  // the process's own set
    CPU_CLR(cpu, &allowed);
    if (CPU_COUNT(&allowed) == 0) return 0;
    return sched_setaffinity(0, sizeof allowed, &allowed);
}

ssize_t sysm_process_vm_readv(pid_t pid, const struct iovec *local, unsigned long local_count,
                              const struct iovec *remote, unsigned long remote_count) {
    return process_vm_readv(pid, local, local_count, remote, remote_count, 0);
}

ssize_t sysm_process_vm_writev(pid_t pid, const struct iovec *local, unsigned long local_count,
                               const struct iovec *remote, unsigned long remote_count) {
    return process_vm_writev(pid, local, local_count, remote, remote_count, 0);
}

int sysm_set_thread_name(pthread_t thread, const char *name) {
    return pthread_setname_np(thread, name);
}

// ---- The child between fork and exec: async-signal-safe calls only, no allocation, no locks. ----

// The kernel's struct for rt_sigaction. glibc's sigaction refuses its own internal signals (32, 33),
// which would keep a parent's handler for them alive in the child until exec.
struct sysm_kernel_sigaction {
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)(void);
    uint64_t mask;
};

static void sysm_write_report(int channel, int32_t kind, int32_t value, int32_t detail) {
    struct sysm_child_report report = { kind, value, detail };
    const char *bytes = (const char *)&report;
    size_t left = sizeof report;
    while (left > 0) {
        ssize_t n = write(channel, bytes, left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        bytes += n;
        left -= (size_t)n;
    }
}

static _Noreturn void sysm_fail(int channel, int stage) {
    sysm_write_report(channel, SYSM_REPORT_FAILED, errno, stage);
    _exit(127);
}

// Handlers of the parent must not run in a child: every disposition back to the default, or to SIG_IGN for
// the signals in `ignored` (when given).
static void sysm_reset_signal_handlers(const sigset_t *ignored) {
    for (int signal = 1; signal < 65; signal++) {
        if (signal == SIGKILL || signal == SIGSTOP) continue;
        struct sysm_kernel_sigaction action = { 0 };
        action.handler = ignored && sigismember(ignored, signal) == 1 ? SIG_IGN : SIG_DFL;
        syscall(SYS_rt_sigaction, signal, &action, NULL, sizeof action.mask);
    }
}

// Forks with every signal blocked across the fork, so that no parent handler runs in the child before
// `child` resets them; `child` must not return.
static pid_t sysm_fork_blocked(void (*child)(const void *), const void *request) {
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);
    pid_t pid = fork();
    if (pid == 0) {
        child(request);
        _exit(127);
    }
    int saved = errno;
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    errno = saved;
    return pid;
}

static _Noreturn void sysm_child(const struct sysm_spawn_request *request) {
    int channel = request->channel;
    close(request->parent_channel);

    // The program starts as it would from a shell: default dispositions, except what was ignored when
    // sysmirror started.
    sysm_reset_signal_handlers(request->ignored);
    if (sigprocmask(SIG_SETMASK, request->mask, NULL) != 0) sysm_fail(channel, SYSM_STAGE_SIGNALS);

    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) sysm_fail(channel, SYSM_STAGE_NO_NEW_PRIVS);
    // Yama (ptrace_scope 1) lets only ancestors attach unless the tracee names its tracer; the exception
    // survives exec. Without Yama the call fails with EINVAL, and nothing needs allowing.
    if (request->allow_any_tracer) (void)prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);

    struct sock_fprog program = {
        .len = request->filter_length,
        .filter = (struct sock_filter *)request->filter,
    };
    unsigned int flags = request->filter_flags | SECCOMP_FILTER_FLAG_NEW_LISTENER;
    int listener = sysm_seccomp(SECCOMP_SET_MODE_FILTER, flags, &program);
    if (listener < 0 && errno == EINVAL && (flags & SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV)) {
        flags &= ~SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;  // kernels before 5.19
        listener = sysm_seccomp(SECCOMP_SET_MODE_FILTER, flags, &program);
    }
    if (listener < 0) sysm_fail(channel, SYSM_STAGE_SECCOMP);

    // From here on, routed syscalls wait for the parent. write, read and close are never routed.
    sysm_write_report(channel, SYSM_REPORT_LISTENER, listener, (int32_t)flags);
    char ack;
    ssize_t n;
    do { n = read(channel, &ack, 1); } while (n < 0 && errno == EINTR);
    if (n != 1) { errno = EPIPE; sysm_fail(channel, SYSM_STAGE_HANDOVER); }
    close(listener);

    if (request->path == NULL) _exit(0);
    execve(request->path, request->argv, request->envp);
    sysm_fail(channel, SYSM_STAGE_EXEC);
}

static void sysm_spawn_child(const void *request) { sysm_child(request); }

pid_t sysm_spawn(const struct sysm_spawn_request *request) {
    return sysm_fork_blocked(sysm_spawn_child, request);
}

static void sysm_helper_child(const void *argument) {
    const struct sysm_helper_request *request = argument;
    sysm_reset_signal_handlers(NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
    if (getppid() != request->parent) _exit(127);  // the parent died before the line above
    // Move the descriptors above 2 first, so that dup2 onto 0-2 cannot close one still to be moved.
    int moved[3];
    for (int i = 0; i < 3; i++) moved[i] = fcntl(request->fds[i], F_DUPFD_CLOEXEC, 3);
    for (int i = 0; i < 3; i++) {
        if (moved[i] < 0 || dup2(moved[i], i) < 0) goto failed;
    }
    execve(request->path, request->argv, request->envp);
failed:;
    int error = errno;
    (void)!write(request->report, &error, sizeof error);
    _exit(127);
}

pid_t sysm_spawn_helper(const struct sysm_helper_request *request) {
    return sysm_fork_blocked(sysm_helper_child, request);
}

ssize_t sysm_send_with_fd(int socket, const void *bytes, size_t length, int fd) {
    struct iovec data = {.iov_base = (void *)bytes, .iov_len = length};
    union {
        char buffer[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof control);
    struct msghdr message = {.msg_iov = &data, .msg_iovlen = 1};
    if (fd >= 0) {
        message.msg_control = control.buffer;
        message.msg_controllen = sizeof control.buffer;
        struct cmsghdr *header = CMSG_FIRSTHDR(&message);
        header->cmsg_level = SOL_SOCKET;
        header->cmsg_type = SCM_RIGHTS;
        header->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(header), &fd, sizeof(int));
    }
    return sendmsg(socket, &message, MSG_NOSIGNAL);
}

ssize_t sysm_receive_with_fd(int socket, void *bytes, size_t capacity, int *fd) {
    return sysm_receive_with_fd_from(socket, bytes, capacity, fd, NULL);
}

ssize_t sysm_receive_with_fd_from(int socket, void *bytes, size_t capacity, int *fd, uid_t *sender) {
    struct iovec data = {.iov_base = bytes, .iov_len = capacity};
    union {
        char buffer[CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(struct ucred))];
        struct cmsghdr align;
    } control;
    struct msghdr message = {
        .msg_iov = &data, .msg_iovlen = 1, .msg_control = control.buffer, .msg_controllen = sizeof control.buffer};
    *fd = -1;
    if (sender) *sender = (uid_t)-1;
    ssize_t result = recvmsg(socket, &message, MSG_CMSG_CLOEXEC);
    if (result < 0) return result;
    for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header; header = CMSG_NXTHDR(&message, header)) {
        if (header->cmsg_level == SOL_SOCKET && header->cmsg_type == SCM_RIGHTS) {
            memcpy(fd, CMSG_DATA(header), sizeof(int));
        } else if (sender && header->cmsg_level == SOL_SOCKET && header->cmsg_type == SCM_CREDENTIALS) {
            struct ucred credentials;
            memcpy(&credentials, CMSG_DATA(header), sizeof credentials);
            *sender = credentials.uid;
        }
    }
    return result;
}

int sysm_accept4(int socket, struct sockaddr *address, socklen_t *length, int flags) {
    return accept4(socket, address, length, flags);
}
