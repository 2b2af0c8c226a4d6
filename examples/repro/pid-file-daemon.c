/*
 * pid-file-daemon.c: a program that starts a daemon and exits, leaving the
 * daemon's pid in a file — the process to checkpoint is not the one crh
 * started:
 *
 *   crh repro examples/repro/pid-file-daemon.c --when-ready --pid-file daemon.pid --finish-signal USR1
 *   crh repro examples/repro/pid-file-daemon.c --when-ready --pid-file daemon.pid --finish-signal USR1 -- tree
 *
 * The daemon (fork, setsid) maps a shared anonymous page and a private one,
 * writes a word to each, writes its pid to daemon.pid (whole, then renamed)
 * and waits in FUTEX_WAIT for SIGUSR1; the launcher exits 0 once the file
 * is there. Woken, the daemon prints (on the launcher's stdout, which it
 * inherited) whether it still leads its own session, both words, and
 * whether the shared page is still a shared mapping, then exits 0.
 * With the argument `tree` the daemon first forks a child that sleeps: a
 * process tree, which `crh cr --pid-file` checkpoints and restores whole
 * (the same pids, parent, session and group).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile uint32_t woken;

static void on_usr1(int sig)
{
	(void)sig;
	woken = 1;
	syscall(SYS_futex, &woken, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static int still_shared(const void *page)
{
	char line[512], perms[8];
	unsigned long start, end;
	int shared = 0;
	FILE *maps = fopen("/proc/self/maps", "re");

	while (maps && fgets(line, sizeof line, maps))
		if (sscanf(line, "%lx-%lx %7s", &start, &end, perms) == 3 && start == (unsigned long)page)
			shared = perms[3] == 's';
	if (maps)
		fclose(maps);
	return shared;
}

int main(int argc, char **argv)
{
	int tree = argc > 1 && strcmp(argv[1], "tree") == 0;
	struct sigaction sa;
	char text[32];
	pid_t daemon;
	int fd, n;

	setvbuf(stdout, NULL, _IONBF, 0);
	daemon = fork();
	if (daemon < 0)
		return 1;
	if (daemon > 0) {
		/* The launcher: done once the pid file is there (or the daemon died). */
		while (access("daemon.pid", F_OK) != 0) {
			if (waitpid(daemon, NULL, WNOHANG) == daemon)
				return 1;
			usleep(1000);
		}
		return 0;
	}

	setsid();
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	volatile uint32_t *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	volatile uint32_t *private = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (shared == MAP_FAILED || private == MAP_FAILED)
		return 1;
	shared[0] = 0x5a17ed;
	private[0] = 0x9121;
	if (tree && fork() == 0) {
		pause();
		_exit(0);
	}
	n = snprintf(text, sizeof text, "%d\n", (int)getpid());
	fd = open("daemon.pid.tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, text, (size_t)n) != n || close(fd) < 0 || rename("daemon.pid.tmp", "daemon.pid") < 0)
		return 1;

	while (!woken)
		syscall(SYS_futex, &woken, FUTEX_WAIT, 0, NULL, NULL, 0);
	printf("woke: session=%d shared=0x%x private=0x%x still-shared=%d\n", getsid(0) == getpid(), shared[0], private[0], still_shared((const void *)shared));
	return 0;
}
