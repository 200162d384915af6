// debuggee (C): reads the pod's service-account token, prints it and exits with status 7. DebuggerTests
// stop on the line marked "break here", where `token` holds what the pod's file held. With "wait", it first
// prints "ready PID" and waits for a line on its input: time for a debugger to attach.
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static char token[256];

int main(int argc, char **argv) {
    FILE *file = fopen("/var/run/secrets/kubernetes.io/serviceaccount/token", "r");
    if (!file || !fgets(token, sizeof token, file)) {
        perror("token");
        return 3;
    }
    fclose(file);
    if (argc > 1 && strcmp(argv[1], "wait") == 0) {
        printf("ready %d\n", getpid());
        fflush(stdout);
        getchar();
    }
    printf("token: %s\n", token); // break here
    return 7;
}
