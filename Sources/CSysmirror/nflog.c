#define _GNU_SOURCE
#include "sysmirror_shims.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_log.h>
#include <linux/netlink.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/// Sends one NFULNL_MSG_CONFIG message with one attribute, and reads the kernel's acknowledgement:
/// 0 or -errno.
static int nflog_config(int fd, uint16_t group, uint16_t type, const void *value, uint16_t length) {
    char message[NLMSG_SPACE(sizeof(struct nfgenmsg) + NLA_HDRLEN + 16)] __attribute__((aligned(4)));
    memset(message, 0, sizeof message);
    struct nlmsghdr *header = (struct nlmsghdr *)message;
    header->nlmsg_type = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG;
    header->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    header->nlmsg_seq = type;
    struct nfgenmsg *generic = NLMSG_DATA(header);
    generic->nfgen_family = AF_UNSPEC;
    generic->version = NFNETLINK_V0;
    generic->res_id = htons(group);
    struct nlattr *attribute = (struct nlattr *)((char *)generic + NLMSG_ALIGN(sizeof *generic));
    attribute->nla_type = type;
    attribute->nla_len = NLA_HDRLEN + length;
    memcpy((char *)attribute + NLA_HDRLEN, value, length);
    header->nlmsg_len = NLMSG_LENGTH(NLMSG_ALIGN(sizeof *generic) + NLA_ALIGN(attribute->nla_len));
    if (send(fd, message, header->nlmsg_len, 0) < 0) return -errno;
    char answer[256] __attribute__((aligned(4)));
    ssize_t got = recv(fd, answer, sizeof answer, 0);
    if (got < 0) return -errno;
    struct nlmsghdr *reply = (struct nlmsghdr *)answer;
    if (got >= (ssize_t)NLMSG_LENGTH(sizeof(struct nlmsgerr)) && reply->nlmsg_type == NLMSG_ERROR) {
        return ((struct nlmsgerr *)NLMSG_DATA(reply))->error;
    }
    return 0;
}

int sysm_nflog_open(uint16_t group, int receive_buffer) {
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
    if (fd < 0) return -errno;
    struct sockaddr_nl address = {.nl_family = AF_NETLINK};
    int result = bind(fd, (struct sockaddr *)&address, sizeof address) < 0 ? -errno : 0;
    struct nfulnl_msg_config_cmd bind_group = {.command = NFULNL_CFG_CMD_BIND};
    if (result == 0) result = nflog_config(fd, group, NFULA_CFG_CMD, &bind_group, sizeof bind_group);
    struct nfulnl_msg_config_mode mode = {.copy_range = htonl(0xffff), .copy_mode = NFULNL_COPY_PACKET};
    if (result == 0) result = nflog_config(fd, group, NFULA_CFG_MODE, &mode, sizeof mode);
    // Batches of up to 256 packets in a message of up to 128 KiB (the kernel's default, a page or two,
    // would end most batches early), flushed after 10 ms: few wake-ups under load, little delay when idle.
    uint32_t threshold = htonl(256), timeout = htonl(1), size = htonl(128 << 10);
    if (result == 0) result = nflog_config(fd, group, NFULA_CFG_QTHRESH, &threshold, sizeof threshold);
    if (result == 0) result = nflog_config(fd, group, NFULA_CFG_TIMEOUT, &timeout, sizeof timeout);
    if (result == 0) result = nflog_config(fd, group, NFULA_CFG_NLBUFSIZ, &size, sizeof size);
    if (result == 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &receive_buffer, sizeof receive_buffer) < 0) {
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof receive_buffer);
    }
    if (result < 0) {
        close(fd);
        return result;
    }
    return fd;
}
