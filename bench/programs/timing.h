// Timing helpers shared by the bench's C programs.
#ifndef SYSMIRROR_BENCH_TIMING_H
#define SYSMIRROR_BENCH_TIMING_H

#include <stdlib.h>
#include <time.h>

static inline long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static inline int compare_samples(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

/// Sorts `samples` and prints the median and the 99th percentile, as `p50_ns` and `p99_ns` lines.
static inline void print_percentiles(long long *samples, int count) {
    qsort(samples, count, sizeof *samples, compare_samples);
    printf("p50_ns %lld\np99_ns %lld\n", samples[count / 2], samples[count * 99 / 100]);
}

#endif
