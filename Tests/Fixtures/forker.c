// forker BUSYBOX: a child by fork+exec, a child by vfork+exec, and a thread that opens a file.
// Exits 0 when every child exited 0 and the thread's open worked.
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

static void *opener(void *path) {
    int fd = open(path, O_RDONLY);
    if (fd >= 0) close(fd);
    return (void *)(long)(fd >= 0);
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    pid_t forked = fork();
    if (forked == 0) {
        execl(argv[1], "busybox", "echo", "forked child", (char *)NULL);
        _exit(127);
    }
    pid_t vforked = vfork();
    if (vforked == 0) {
        execl(argv[1], "busybox", "echo", "vforked child", (char *)NULL);
        _exit(127);
    }
    pthread_t thread;
    void *opened = 0;
    pthread_create(&thread, NULL, opener, "/etc/hostname");
    pthread_join(thread, &opened);
    int a = 0, b = 0;
    waitpid(forked, &a, 0);
    waitpid(vforked, &b, 0);
    printf("thread open %s\n", opened ? "ok" : "failed");
    return (a == 0 && b == 0 && opened) ? 0 : 1;
}
