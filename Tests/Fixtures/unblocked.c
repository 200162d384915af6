// unblocked [--close-fds] COMMAND [ARGS...]: runs COMMAND with no signal blocked or ignored, as a login shell
// would start it. Test runners start children with the signal mask of their own threads, which blocks nearly
// everything; sysmirror passes a program the mask it was given, so tests of signal handling must start from
// a clean one. With --close-fds, descriptors above 2 are closed too: a long-running service must not hold
// what the test runner had open at that moment (another child's pipe, or the socket by which Foundation
// learns that a child exited), or a test waits for that child forever.
#define _GNU_SOURCE
#include <signal.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc > 2 && strcmp(argv[1], "--close-fds") == 0) {
        close_range(3, ~0U, 0);
        argv++;
        argc--;
    }
    if (argc < 2) return 2;
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int signal = 1; signal < NSIG; signal++) {
        if (signal != SIGKILL && signal != SIGSTOP) sigaction(signal, &(struct sigaction){ .sa_handler = SIG_DFL }, NULL);
    }
    execvp(argv[1], argv + 1);
    return 127;
}
