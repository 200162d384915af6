// signals PATH: threads open PATH in a loop while the main thread keeps signalling them, with and without
// SA_RESTART, so that signals arrive while their opens wait on the supervisor. Every open must succeed, or
// fail with EINTR under the handler without SA_RESTART; anything else is a failure.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

enum { THREADS = 4, OPENS = 3000 };
static const char *path;
static atomic_long handled, opened, interrupted, failed;
static atomic_int running = THREADS;

static void on_signal(int signal) { (void)signal; atomic_fetch_add(&handled, 1); }

static void *worker(void *unused) {
    (void)unused;
    for (int i = 0; i < OPENS; i++) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) { atomic_fetch_add(&opened, 1); close(fd); }
        else if (errno == EINTR) atomic_fetch_add(&interrupted, 1);
        else { atomic_fetch_add(&failed, 1); fprintf(stderr, "open: %s\n", strerror(errno)); }
    }
    atomic_fetch_sub(&running, 1);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    path = argv[1];
    struct sigaction restart = { .sa_handler = on_signal, .sa_flags = SA_RESTART };
    struct sigaction plain = { .sa_handler = on_signal, .sa_flags = 0 };
    sigaction(SIGUSR1, &restart, NULL);
    sigaction(SIGUSR2, &plain, NULL);
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++) pthread_create(&threads[i], NULL, worker, NULL);
    long sent = 0;
    while (atomic_load(&running) > 0) {
        for (int i = 0; i < THREADS; i++) {
            if (pthread_kill(threads[i], sent % 2 ? SIGUSR2 : SIGUSR1) == 0) sent++;
        }
        usleep(50);
    }
    for (int i = 0; i < THREADS; i++) pthread_join(threads[i], NULL);
    printf("opened=%ld interrupted=%ld failed=%ld signals=%ld\n", atomic_load(&opened),
           atomic_load(&interrupted), atomic_load(&failed), atomic_load(&handled));
    return atomic_load(&failed) == 0 && atomic_load(&opened) + atomic_load(&interrupted) == THREADS * OPENS ? 0 : 1;
}
