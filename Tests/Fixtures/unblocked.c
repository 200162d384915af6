// unblocked COMMAND [ARGS...]: runs COMMAND with no signal blocked or ignored, as a login shell would start
// it. Test runners start children with the signal mask of their own threads, which blocks nearly everything;
// sysmirror passes a program the mask it was given, so tests of signal handling must start from a clean one.
#include <signal.h>
#include <unistd.h>

int main(int argc, char **argv) {
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
