// connect-latency: N blocking connects (and closes) to ADDRESS:PORT; prints p50 and p99 in ns.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "timing.h"

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: connect-latency N ADDRESS PORT\n");
        return 2;
    }
    int n = atoi(argv[1]);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
    inet_pton(AF_INET, argv[2], &address.sin_addr);
    long long *samples = calloc(n, sizeof *samples);
    for (int i = 0; i < n; i++) {
        long long start = now_ns();
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&address, sizeof address) != 0) {
            perror("connect");
            return 1;
        }
        samples[i] = now_ns() - start;
        // Reset instead of FIN: thousands of connections must not pile up in TIME_WAIT.
        struct linger reset = {.l_onoff = 1, .l_linger = 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
        close(fd);
    }
    print_percentiles(samples, n);
    return 0;
}
