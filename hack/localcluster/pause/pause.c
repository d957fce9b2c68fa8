/*
 * The pod sandbox's "pause" process for the local real node (no registry to pull
 * registry.k8s.io/pause from). Like Kubernetes' own: it holds the pod's namespaces, reaps the
 * zombies it inherits as the pod's PID 1 (shared process namespace), and exits on SIGINT or
 * SIGTERM, so a sandbox stops at once instead of after a kill timeout.
 */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) { _exit(0); (void)sig; }

static void on_child(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction stop = {.sa_handler = on_stop};
  struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP};
  if (sigaction(SIGINT, &stop, NULL) < 0 || sigaction(SIGTERM, &stop, NULL) < 0 ||
      sigaction(SIGCHLD, &child, NULL) < 0) {
    return 1;
  }
  for (;;) {
    pause();
  }
}
