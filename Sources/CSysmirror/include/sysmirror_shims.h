// C shims for sysmirror: only what Swift cannot express. Each has its reason beside it.
#ifndef SYSMIRROR_SHIMS_H
#define SYSMIRROR_SHIMS_H

#include <linux/seccomp.h>
#include <linux/filter.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/uio.h>
// The serving half's event loop (LinuxSystem.EventLoop): Swift's Glibc module leaves epoll out.
#include <sys/epoll.h>

// Newer than Debian 12's kernel headers (6.1); the values are the kernel's ABI.
#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (1UL << 0)
#endif
#ifndef SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
#define SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (1UL << 5)
#endif
#ifndef SECCOMP_ADDFD_FLAG_SEND
#define SECCOMP_ADDFD_FLAG_SEND (1UL << 1)
#endif

// The listener's ioctls: their request numbers are _IOWR macros, and ioctl is variadic; Swift imports neither.
int sysm_notif_recv(int listener, struct seccomp_notif *notification);
int sysm_notif_send(int listener, struct seccomp_notif_resp *response);
int sysm_notif_id_valid(int listener, uint64_t id);
int sysm_notif_addfd(int listener, struct seccomp_notif_addfd *addfd);
// ADDFD with SEND, the calling thread held on this CPU meanwhile (its mask put back after): ADDFD wakes it
// with a plain complete(), which may send it to an idle CPU, tens of microseconds away. This thread is left
// free: woken when the caller is done, it may finish its work on the other CPU while the program goes on.
int sysm_notif_addfd_here(int listener, struct seccomp_notif_addfd *addfd, pid_t caller);
int sysm_notif_set_flags(int listener, uint64_t flags);

// Raw syscalls without glibc wrappers on Debian 12 (syscall(2) is variadic).
int sysm_pidfd_open(pid_t pid, unsigned int flags);
int sysm_pidfd_getfd(int pidfd, int targetfd, unsigned int flags);
int sysm_seccomp(unsigned int operation, unsigned int flags, void *args);
int sysm_openat2_probe(void);
// openat2 with RESOLVE_IN_ROOT: how the agent keeps every path inside the target's root.
int sysm_openat2_in_root(int root, const char *path, uint64_t flags, uint64_t mode);
// setns needs _GNU_SOURCE. Joins a namespace on the calling thread only (the agent's per-target threads).
int sysm_setns(int fd, int type);

// SCM_RIGHTS needs the CMSG_* macros. Sends `length` bytes with one descriptor attached; receives up to
// `capacity` bytes and the descriptor that came with them (*fd = -1 when none did). Both return what
// sendmsg/recvmsg return; received descriptors are close-on-exec.
ssize_t sysm_send_with_fd(int socket, const void *bytes, size_t length, int fd);
ssize_t sysm_receive_with_fd(int socket, void *bytes, size_t capacity, int *fd);
// The same, and the sender's user id from SCM_CREDENTIALS (the socket has SO_PASSCRED), or -1 without one.
ssize_t sysm_receive_with_fd_from(int socket, void *bytes, size_t capacity, int *fd, uid_t *sender);

// prctl is variadic. Orphaned descendants of the program are reparented to sysmirror, which reaps them
// and so knows when the last one is gone.
int sysm_become_child_subreaper(void);

// memfd_create, eventfd and pipe2 need _GNU_SOURCE too; all return close-on-exec descriptors.
int sysm_memfd(const char *name);
int sysm_eventfd(void);
int sysm_pipe(int ends[2]);

// <sys/vfs.h> is not in Swift's Glibc module. The file system type of fd (statfs's f_type), or -1.
long sysm_filesystem_type(int fd);

// sched_getcpu and CPU_SET need _GNU_SOURCE. Keeps the calling thread off one CPU (when there is another).
int sysm_current_cpu(void);
int sysm_avoid_cpu(int cpu);

// process_vm_readv needs _GNU_SOURCE too.
ssize_t sysm_process_vm_readv(pid_t pid, const struct iovec *local, unsigned long local_count,
                              const struct iovec *remote, unsigned long remote_count);

// process_vm_writev needs _GNU_SOURCE too: remote stat results go into the program's buffer.
ssize_t sysm_process_vm_writev(pid_t pid, const struct iovec *local, unsigned long local_count,
                               const struct iovec *remote, unsigned long remote_count);

// pthread_setname_np needs _GNU_SOURCE, which Swift's Glibc module is not built with.
int sysm_set_thread_name(pthread_t thread, const char *name);

/// A netlink socket bound to NFLOG group `group`, copying whole packets (up to 64 KiB), with a receive
/// buffer of `receive_buffer` bytes (SO_RCVBUFFORCE where allowed); -errno on failure (EBUSY: the group
/// is taken; EPERM: no CAP_NET_ADMIN).
int sysm_nflog_open(uint16_t group, int receive_buffer);

/// accept4(2), which Swift's Glibc module leaves out.
int sysm_accept4(int socket, struct sockaddr *address, socklen_t *length, int flags);

/// What the child of `sysm_spawn` reports on its channel before it execs.
struct sysm_child_report {
    int32_t kind;    // SYSM_REPORT_*
    int32_t value;   // the listener's fd number in the child, or the errno of the failed stage
    int32_t detail;  // the filter flags that were accepted, or the failed stage (SYSM_STAGE_*)
};
enum { SYSM_REPORT_LISTENER = 1, SYSM_REPORT_FAILED = 2 };
enum {
    SYSM_STAGE_SIGNALS = 1,
    SYSM_STAGE_NO_NEW_PRIVS = 2,
    SYSM_STAGE_SECCOMP = 3,
    SYSM_STAGE_HANDOVER = 4,
    SYSM_STAGE_EXEC = 5,
};

/// Everything the child needs, prepared by the parent before fork: after fork only async-signal-safe C runs.
struct sysm_spawn_request {
    const char *path;            // resolved program path; NULL: exit(0) after the handover (a kernel probe)
    char *const *argv;
    char *const *envp;
    const struct sock_filter *filter;
    unsigned short filter_length;
    unsigned int filter_flags;   // SECCOMP_FILTER_FLAG_*; WAIT_KILLABLE_RECV is dropped if the kernel refuses it
    int channel;                 // the child's end of a SOCK_CLOEXEC socketpair
    int parent_channel;          // the parent's end, closed in the child
    const sigset_t *ignored;     // signals ignored when sysmirror started: the program inherits them ignored
    const sigset_t *mask;        // the signal mask sysmirror started with: the program gets it
    int allow_any_tracer;        // PR_SET_PTRACER_ANY: a debugger started elsewhere may attach under Yama
};

/// Forks a child that installs the filter, reports its listener's fd number on `channel`, waits for one byte
/// from the parent (who takes the listener with pidfd_getfd meanwhile), and execs. Passing the listener
/// with sendmsg is not an option: sendmsg may be routed, and nobody serves the listener yet.
/// Returns the child's pid, or -1 with errno set.
pid_t sysm_spawn(const struct sysm_spawn_request *request);

/// A helper process sysmirror drives (kubectl) and that must not outlive it: it runs in a process group of
/// its own, so that the terminal's Ctrl-C is sysmirror's to handle, and PR_SET_PDEATHSIG ends it when the
/// thread that started it ends, even when sysmirror is killed with SIGKILL. Signal dispositions are the
/// defaults and the mask is empty. `fds` become its stdin, stdout and stderr; an exec failure's errno is
/// written to `report` (a close-on-exec pipe). Returns the child's pid, or -1 with errno set.
struct sysm_helper_request {
    const char *path;
    char *const *argv;
    char *const *envp;
    int fds[3];
    int report;
    pid_t parent;
};
pid_t sysm_spawn_helper(const struct sysm_helper_request *request);

#endif
