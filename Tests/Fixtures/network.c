// network: bind, listen, connect, send (unrouted), sendto with and without an address, sendmsg with a name,
// all on loopback. Prints the ports it used so that a test can find them in the log.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int port_of(int fd) {
    struct sockaddr_in address;
    socklen_t length = sizeof address;
    getsockname(fd, (struct sockaddr *)&address, &length);
    return ntohs(address.sin_port);
}

int main(void) {
    struct sockaddr_in loopback = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

    int receiver = socket(AF_INET, SOCK_DGRAM, 0);
    if (bind(receiver, (struct sockaddr *)&loopback, sizeof loopback) != 0) return 1;
    struct sockaddr_in target = loopback;
    target.sin_port = htons((unsigned short)port_of(receiver));

    int sender = socket(AF_INET, SOCK_DGRAM, 0);
    if (connect(sender, (struct sockaddr *)&target, sizeof target) != 0) return 1;
    if (send(sender, "a", 1, 0) != 1) return 1;                                   // not routed
    if (sendto(sender, "b", 1, 0, NULL, 0) != 1) return 1;                        // not routed: no address
    if (sendto(sender, "c", 1, 0, (struct sockaddr *)&target, sizeof target) != 1) return 1;  // routed
    struct iovec io = { "d", 1 };
    struct msghdr message = { .msg_name = &target, .msg_namelen = sizeof target, .msg_iov = &io, .msg_iovlen = 1 };
    if (sendmsg(receiver, &message, 0) != 1) return 1;                            // routed, with its name

    int listener = socket(AF_INET, SOCK_STREAM, 0);
    if (bind(listener, (struct sockaddr *)&loopback, sizeof loopback) != 0 || listen(listener, 8) != 0) return 1;
    struct sockaddr_in server = loopback;
    server.sin_port = htons((unsigned short)port_of(listener));
    int client = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(client, (struct sockaddr *)&server, sizeof server) != 0) return 1;

    char buffer[8];
    int received = 0;
    for (int i = 0; i < 4; i++) received += (int)recv(receiver, buffer, sizeof buffer, MSG_DONTWAIT) > 0;
    printf("udp %d tcp %d received %d\n", ntohs(target.sin_port), ntohs(server.sin_port), received);
    return received == 4 ? 0 : 1;  // a, b and c from the sender, d sent by the receiver to itself
}
