// sendmsg-loop N: N sendmsg calls without a destination on a connected UDP socket over loopback (the
// pattern of QUIC stacks and Go's WriteMsgUDP). sendmsg cannot be filtered by destination, so when it is
// routed each call costs a round trip. Prints "sendmsg_ns N".
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 100000;
    struct sockaddr_in address = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    int receiver = socket(AF_INET, SOCK_DGRAM, 0);
    socklen_t length = sizeof address;
    if (bind(receiver, (struct sockaddr *)&address, sizeof address) != 0) return 1;
    getsockname(receiver, (struct sockaddr *)&address, &length);
    int sender = socket(AF_INET, SOCK_DGRAM, 0);
    if (connect(sender, (struct sockaddr *)&address, sizeof address) != 0) return 1;
    char payload[64] = { 0 }, sink[64];
    struct iovec io = { payload, sizeof payload };
    struct msghdr message = { .msg_iov = &io, .msg_iovlen = 1 };
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        if (sendmsg(sender, &message, 0) < 0) return 1;
        recv(receiver, sink, sizeof sink, 0);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("sendmsg_ns %.0f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    return 0;
}
