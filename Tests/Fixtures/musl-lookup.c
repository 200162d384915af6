/* musl-lookup: a static musl program (musl-gcc -static) that resolves each name given with musl's own
 * resolver (UDP, with its own answer checks: the reply must come from the name server it asked) and prints
 * "NAME N" with the number of IPv4 addresses, or "NAME error: TEXT". Exits 1 if any lookup failed. */
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

int main(int argc, char **argv) {
    int failed = 0;
    for (int i = 1; i < argc; i++) {
        struct addrinfo hints, *found, *each;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_INET;
        hints.ai_socktype = SOCK_STREAM;
        int error = getaddrinfo(argv[i], "80", &hints, &found);
        if (error != 0) {
            printf("%s error: %s\n", argv[i], gai_strerror(error));
            failed = 1;
            continue;
        }
        int count = 0;
        for (each = found; each; each = each->ai_next) count++;
        printf("%s %d\n", argv[i], count);
        freeaddrinfo(found);
    }
    return failed;
}
