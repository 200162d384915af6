// abi PATH: opens PATH through the i386 entry point (int 0x80) and the x32 one (the syscall number with
// bit 30 set), and prints what each returned. Under sysmirror both must fail with ENOSYS.
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static long i386_open(const char *path) {
    long result;
    __asm__ volatile("int $0x80" : "=a"(result) : "a"(5), "b"(path), "c"(0), "d"(0) : "memory");
    return result;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    // int 0x80 passes 32-bit pointers: the path must live below 4 GiB.
    char *low = mmap((void *)0x10000000, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (low == MAP_FAILED) return 1;
    strcpy(low, argv[1]);
    long i386 = i386_open(low);
    long x32 = syscall(__NR_openat | 0x40000000, -100, argv[1], 0);
    int x32_errno = x32 < 0 ? errno : 0;
    printf("i386 %s\n", i386 >= 0 ? "opened" : strerrorname_np((int)-i386));
    printf("x32 %s\n", x32 >= 0 ? "opened" : strerrorname_np(x32_errno));
    return 0;
}
