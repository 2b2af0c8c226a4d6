/*
 * crh-native: runs a program the way the agent's SPAWN does, but with no
 * tracer — the native reference a traced run is compared with.
 *
 *   crh-native [--pid-file FILE] TIMEOUT_MS STDOUT_PATH FINISH_SIGNAL READY_FILE PROGRAM ARGV0 ARGS...
 *
 * With --pid-file (a daemon, `crh cr --pid-file`): the program started is
 * the launcher; once it has exited 0, the process whose pid FILE holds —
 * our child by then, this program being a child subreaper — is the one
 * waited for, sent FINISH_SIGNAL at once (it is ready), and reported on.
 *
 * The child gets what SPAWN gives a workload: an empty signal mask and
 * default dispositions, ASLR off (personality ADDR_NO_RANDOMIZE), stdin
 * from /dev/null, stdout and stderr on STDOUT_PATH (created, truncated,
 * mode 0600), no other descriptor; the environment and the working
 * directory are this program's own (the caller runs it under `env -i` in
 * the directory it wants). Nobody traces it. This program waits for it and
 * prints two lines on its own stdout:
 *
 *   pid N
 *   exited N | killed SIG | timed-out MS
 *
 * FINISH_SIGNAL (0: none) is sent to the child once it announces readiness,
 * as `crh repro --finish-signal` does in the traced runs: READY_FILE holds a
 * number, or a line CRH-READY appears in STDOUT_PATH.
 * and exits 0, or prints "error: ..." on stderr and exits 127. The pid is
 * whatever fork gives: a native run cannot be given the traced run's pid.
 * Whatever the program leaves running when it ends (a daemon: this program
 * is a child subreaper, so orphans become its children) is killed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The first SIZE - 1 bytes of PATH, NUL-terminated in BUF; how many, or 0
 * when the file is missing or empty. */
static ssize_t read_head(const char *path, char *buf, size_t size)
{
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return 0;
	n = read(fd, buf, size - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	return n;
}

/* Whether the program has announced readiness (see harness/repro/runs.ts). */
static int announced(const char *ready_file, const char *out)
{
	char buf[4096];

	if (read_head(ready_file, buf, sizeof buf) > 0 && buf[0] >= '0' && buf[0] <= '9')
		return 1;
	/* The marker near the start is enough: programs announce early. */
	if (read_head(out, buf, sizeof buf) == 0)
		return 0;
	return strncmp(buf, "CRH-READY\n", 10) == 0 || strstr(buf, "\nCRH-READY\n") != NULL;
}

/* Whatever the run left running (a daemon, reparented to us) is killed and
 * reaped: the next run starts with none of it. */
static void kill_leftovers(void)
{
	int status;

	for (;;) {
		char path[64];
		FILE *f;
		int child, any = 0;

		snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)getpid());
		f = fopen(path, "re");
		if (!f)
			break;
		while (fscanf(f, "%d", &child) == 1) {
			kill(child, SIGKILL);
			any = 1;
		}
		fclose(f);
		if (!any)
			break;
		while (waitpid(-1, &status, 0) > 0)
			;
	}
}

static void __attribute__((noreturn)) child(const char *out, const char *path, char **argv)
{
	int in_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	int out_fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	sigset_t none;

	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	for (int s = 1; s < NSIG; s++)
		signal(s, SIG_DFL);
	if (in_fd < 0 || out_fd < 0 || personality((unsigned long)personality(0xffffffff) | ADDR_NO_RANDOMIZE) < 0 ||
	    dup2(in_fd, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(out_fd, 2) < 0 ||
	    syscall(SYS_close_range, 3u, ~0u, 0u) < 0) {
		fprintf(stderr, "error: preparing %s: %s\n", path, strerror(errno));
		_exit(127);
	}
	execve(path, argv, environ);
	fprintf(stderr, "error: execve %s: %s\n", path, strerror(errno));
	_exit(127);
}

/* The pid FILE names (its first line), 0 when none. */
static pid_t read_pid_file(const char *file)
{
	char buf[32];
	long v;

	if (read_head(file, buf, sizeof buf) == 0)
		return 0;
	v = strtol(buf, NULL, 10);
	return v > 0 && v < 0x40000000 ? (pid_t)v : 0;
}

int main(int argc, char **argv)
{
	struct timespec start, now;
	long timeout_ms;
	int status, finish_signal, finished = 0;
	const char *pid_file = NULL;
	pid_t pid, r;

	if (argc > 2 && strcmp(argv[1], "--pid-file") == 0) {
		pid_file = argv[2];
		argv += 2;
		argc -= 2;
	}
	if (argc < 7) {
		fprintf(stderr, "usage: crh-native [--pid-file FILE] TIMEOUT_MS STDOUT_PATH FINISH_SIGNAL READY_FILE PROGRAM ARGV0 [ARGS...]\n");
		return 127;
	}
	timeout_ms = strtol(argv[1], NULL, 10);
	finish_signal = (int)strtol(argv[3], NULL, 10);
	clock_gettime(CLOCK_MONOTONIC, &start);
	/* A daemon the program leaves behind becomes ours (not init's): killed below. */
	prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
	pid = fork();
	if (pid < 0) {
		fprintf(stderr, "error: fork: %s\n", strerror(errno));
		return 127;
	}
	if (pid == 0)
		child(argv[2], argv[5], argv + 6);
	printf("pid %d\n", (int)pid);
	/* Polling keeps this free of signal handling; 1 ms is nothing to a TCG guest. */
	for (;;) {
		r = waitpid(pid, &status, WNOHANG);
		if (r == pid && pid_file && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
			/* The launcher is done: from now on the daemon is the program. */
			pid_t daemon = read_pid_file(pid_file);

			pid_file = NULL;
			if (daemon > 0 && waitpid(daemon, &status, WNOHANG) == 0) {
				pid = daemon;
				if (finish_signal > 0) {
					kill(pid, finish_signal);
					finished = 1;
				}
				continue;
			}
			/* No live child of ours is named: the launcher's status is the report. */
			break;
		}
		if (r == pid)
			break;
		if (r < 0 && errno != EINTR) {
			fprintf(stderr, "error: waitpid: %s\n", strerror(errno));
			return 127;
		}
		if (finish_signal > 0 && !finished && !pid_file && announced(argv[4], argv[2])) {
			kill(pid, finish_signal);
			finished = 1;
		}
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (timeout_ms > 0 && (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 > timeout_ms) {
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			printf("timed-out %ld\n", timeout_ms);
			kill_leftovers();
			return 0;
		}
		usleep(1000);
	}
	if (WIFEXITED(status))
		printf("exited %d\n", WEXITSTATUS(status));
	else
		printf("killed %d\n", WTERMSIG(status));
	kill_leftovers();
	return 0;
}
