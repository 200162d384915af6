// static-reader FILE STATUS: prints FILE, then exits with STATUS. Built with -static.
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) return 3;
    char buffer[4096];
    ssize_t n;
    while ((n = read(fd, buffer, sizeof buffer)) > 0) write(1, buffer, (size_t)n);
    close(fd);
    return atoi(argv[2]);
}
