// unotify-addfd: the floor of a kept open (the file cache), as unotify-min is the floor of a routed one.
// It runs a program with openat routed to user notification and answers each one as sysmirror answers a
// kept file: a new open file description of one kept copy (reopened through /proc/self/fd), installed with
// SECCOMP_IOCTL_NOTIF_ADDFD and SECCOMP_ADDFD_FLAG_SEND, the calling thread held on this CPU meanwhile
// (without that, both wake-ups cross to the other vCPU: about 100 us on an idle 2-vCPU VM). Nothing else:
// no path read, no policy, no bookkeeping. SYNC_WAKE_UP is set as in unotify-min.
// Build: cc -O2 -pthread -o unotify-addfd unotify-addfd.c
// Use: unotify-addfd FILE PROGRAM [ARGS...]   (every openat of PROGRAM opens FILE's copy, read-only)
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

// The kernel ABI constants Debian 12's headers lack, as sysmirror defines them.
#include "../../Sources/CSysmirror/include/sysmirror_shims.h"

static int listener = -1, kept = -1, descriptors = -1;

static int send_fd(int sock, int fd) {
    char control[CMSG_SPACE(sizeof(int))], byte = 0;
    struct iovec io = {&byte, 1};
    struct msghdr m = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET, c->cmsg_type = SCM_RIGHTS, c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    return sendmsg(sock, &m, 0) < 0 ? -1 : 0;
}

static int receive_fd(int sock) {
    char control[CMSG_SPACE(sizeof(int))], byte;
    struct iovec io = {&byte, 1};
    struct msghdr m = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
    if (recvmsg(sock, &m, 0) <= 0) return -1;
    int fd;
    memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&m)), sizeof fd);
    return fd;
}

/// A memfd holding `path`'s bytes: the kept copy.
static int keep(const char *path) {
    int source = open(path, O_RDONLY | O_CLOEXEC), copy = memfd_create("kept", MFD_CLOEXEC);
    if (source < 0 || copy < 0) return -1;
    char buffer[65536];
    ssize_t count;
    while ((count = read(source, buffer, sizeof buffer)) > 0)
        if (write(copy, buffer, count) != count) return -1;
    close(source);
    return count < 0 ? -1 : copy;
}

static void *serve(void *unused) {
    (void)unused;
    char name[16];
    snprintf(name, sizeof name, "%d", kept);
    for (;;) {
        struct seccomp_notif request;
        memset(&request, 0, sizeof request);
        if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &request) < 0) {
            if (errno == EINTR || errno == ENOENT) continue;
            return NULL;
        }
        int description = openat(descriptors, name, O_RDONLY | O_CLOEXEC);
        struct seccomp_notif_addfd add = {.id = request.id, .flags = SECCOMP_ADDFD_FLAG_SEND, .srcfd = description};
        cpu_set_t here, callers;
        CPU_ZERO(&here);
        CPU_SET(sched_getcpu(), &here);
        int held = sched_getaffinity(request.pid, sizeof callers, &callers) == 0
            && sched_setaffinity(request.pid, sizeof here, &here) == 0;
        ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, &add);
        if (held) sched_setaffinity(request.pid, sizeof callers, &callers);
        close(description);
    }
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s FILE PROGRAM [ARGS...]\n", argv[0]);
        return 2;
    }
    kept = keep(argv[1]);
    descriptors = open("/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC);
    int pair[2];
    if (kept < 0 || descriptors < 0 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0) {
        perror("unotify-addfd");
        return 1;
    }
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_openat, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog program = {sizeof filter / sizeof filter[0], filter};
    pid_t child = fork();
    if (child < 0) {
        perror("fork");
        return 1;
    }
    if (child == 0) {
        close(pair[0]);
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) _exit(126);
        int fd = syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &program);
        if (fd < 0 || send_fd(pair[1], fd)) _exit(126);
        close(fd);
        close(pair[1]);
        execvp(argv[2], argv + 2);
        _exit(127);
    }
    close(pair[1]);
    listener = receive_fd(pair[0]);
    if (listener < 0) {
        fprintf(stderr, "unotify-addfd: the child could not install its filter\n");
        return 1;
    }
    ioctl(listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP);  // best effort
    pthread_t thread;
    pthread_create(&thread, NULL, serve, NULL);
    int status;
    waitpid(child, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
