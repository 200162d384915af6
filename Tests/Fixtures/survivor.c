// survivor PATH: opens PATH every 10 ms and prints "started" once the first open worked. When an open fails it
// prints the error's name and exits 0; after 10 s without a failure it exits 1. A test kills sysmirror meanwhile:
// the program must see its routed calls fail (ENOSYS), not wait for a supervisor that is gone.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    for (int i = 0; i < 1000; i++) {
        int fd = open(argv[1], O_RDONLY);
        if (fd < 0) {
            printf("open failed: %s\n", strerrorname_np(errno));
            return 0;
        }
        close(fd);
        if (i == 0) {
            printf("started\n");
            fflush(stdout);
        }
        usleep(10000);
    }
    return 1;
}
