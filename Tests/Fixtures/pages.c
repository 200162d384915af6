// pages: paths placed at the very end of a mapped page, with an inaccessible page after it. A path whose NUL
// is the page's last byte must be read whole; one that runs into the next page gets EFAULT from the kernel.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    long page = sysconf(_SC_PAGESIZE);
    char *pages = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (pages == MAP_FAILED || mprotect(pages + page, page, PROT_NONE) != 0) return 1;
    size_t length = strlen(argv[1]) + 1;
    char *edge = pages + page - length;
    memcpy(edge, argv[1], length);
    int fd = open(edge, O_RDONLY);
    printf("edge %s\n", fd >= 0 ? "ok" : strerror(errno));
    memset(pages + page - 8, 'x', 8);
    int bad = open(pages + page - 8, O_RDONLY);
    printf("unterminated %s\n", bad < 0 && errno == EFAULT ? "EFAULT" : "unexpected");
    return fd >= 0 && bad < 0 ? 0 : 1;
}
