// file-reads: what a program pays to read files, for sysmirror-bench.
//   file-reads latency N FILE          open+read+close N times; prints p50 and p99 in ns
//   file-reads throughput FILE         open, then read the whole file in 1 MiB reads; prints MB/s of the reads
//   file-reads threads T N FILE        N opens+close spread over T threads; prints opens per second, failures
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "timing.h"

static const char *path;
static int per_thread;
static int failures;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void *opener(void *unused) {
    (void)unused;
    for (int i = 0; i < per_thread; i++) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            pthread_mutex_lock(&lock);
            failures++;
            pthread_mutex_unlock(&lock);
            continue;
        }
        close(fd);
    }
    return NULL;
}

int main(int argc, char **argv) {
    static char buffer[1 << 20];
    if (argc == 4 && strcmp(argv[1], "latency") == 0) {
        int n = atoi(argv[2]);
        long long *samples = calloc(n, sizeof *samples);
        for (int i = 0; i < n; i++) {
            long long start = now_ns();
            int fd = open(argv[3], O_RDONLY | O_CLOEXEC);
            if (fd < 0 || read(fd, buffer, sizeof buffer) < 0) { perror(argv[3]); return 1; }
            close(fd);
            samples[i] = now_ns() - start;
        }
        print_percentiles(samples, n);
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "throughput") == 0) {
        long long opened = now_ns();
        int fd = open(argv[2], O_RDONLY | O_CLOEXEC);
        if (fd < 0) { perror(argv[2]); return 1; }
        long long start = now_ns();
        long long total = 0;
        ssize_t count;
        while ((count = read(fd, buffer, sizeof buffer)) > 0) total += count;
        long long end = now_ns();
        close(fd);
        printf("open_ms %.3f\nread_mb_s %.1f\nbytes %lld\n", (start - opened) / 1e6, total / 1e6 / ((end - start) / 1e9), total);
        return 0;
    }
    if (argc == 5 && strcmp(argv[1], "threads") == 0) {
        int threads = atoi(argv[2]);
        path = argv[4];
        per_thread = atoi(argv[3]) / threads;
        pthread_t ids[threads];
        long long start = now_ns();
        for (int i = 0; i < threads; i++) pthread_create(&ids[i], NULL, opener, NULL);
        for (int i = 0; i < threads; i++) pthread_join(ids[i], NULL);
        long long end = now_ns();
        printf("opens_per_s %.0f\nfailures %d\n", per_thread * threads / ((end - start) / 1e9), failures);
        return 0;
    }
    fprintf(stderr, "usage: file-reads latency N FILE | throughput FILE | threads T N FILE\n");
    return 2;
}
