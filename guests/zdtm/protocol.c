/*
 * protocol.c: the ZDTM test protocol (see protocol.h). Written for
 * cr-harness from the protocol's description, not from ZDTM's sources.
 */
#define _GNU_SOURCE
#include "protocol.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

volatile uint32_t *zp_shared;
int zp_dirfd = -1;

enum { STARTING = 0, READY = 1, GONE = 2 };

static volatile uint32_t sigterm_word;
static pid_t start_pid;
static char outfile[4096], inprogress[4200];

static long futex(volatile uint32_t *word, int op, uint32_t value)
{
	return syscall(SYS_futex, word, op, value, NULL, NULL, 0);
}

static void on_sigterm(int sig)
{
	(void)sig;
	sigterm_word = 1;
	futex(&sigterm_word, FUTEX_WAKE, 1);
}

/* The outfile keeps its .inprogress name unless this is still the process
 * that started: a restore under another pid shows in the name. */
static void rename_outfile(void)
{
	if (getpid() == start_pid)
		rename(inprogress, outfile);
}

static void __attribute__((noreturn)) die(const char *what)
{
	fprintf(stderr, "zdtm protocol: %s: %s\n", what, strerror(errno));
	exit(1);
}

/* The launcher: wait for the daemon's readiness, publish its pid, exit 0. */
static void __attribute__((noreturn)) launcher(pid_t child, const char *pidfile)
{
	char tmp[4200], text[32];
	int fd, status, n;

	while (zp_shared[0] == STARTING) {
		/* The daemon dying first ends the wait too: 100 ms polls of it. */
		struct timespec slice = { 0, 100 * 1000 * 1000 };

		if (waitpid(child, &status, WNOHANG) == child) {
			fprintf(stderr, "zdtm protocol: the test ended before it was ready (status 0x%x)\n", status);
			exit(1);
		}
		syscall(SYS_futex, zp_shared, FUTEX_WAIT, STARTING, &slice, NULL, 0);
	}
	/* Written whole, then renamed: a reader never sees half a pid. */
	snprintf(tmp, sizeof tmp, "%s.tmp", pidfile);
	n = snprintf(text, sizeof text, "%d\n", (int)child);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, text, (size_t)n) != n || close(fd) < 0 || rename(tmp, pidfile) < 0)
		die(pidfile);
	exit(0);
}

int zp_init(int argc, char **argv)
{
	const char *pidfile = NULL;
	struct sigaction sa;
	int i, fd;
	pid_t child;

	for (i = 1; i < argc; i++) {
		if (strncmp(argv[i], "--pidfile=", 10) == 0)
			pidfile = argv[i] + 10;
		else if (strncmp(argv[i], "--outfile=", 10) == 0)
			snprintf(outfile, sizeof outfile, "%s", argv[i] + 10);
		else
			break;
	}
	if (!pidfile || !outfile[0]) {
		fprintf(stderr, "usage: %s --pidfile=FILE --outfile=FILE [ARGS]\n", argv[0]);
		exit(2);
	}
	snprintf(inprogress, sizeof inprogress, "%s.inprogress", outfile);

	fd = open(inprogress, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
		die(inprogress);
	close(fd);
	fd = open("/dev/null", O_RDONLY);
	if (fd < 0 || (fd != 0 && (dup2(fd, 0) < 0 || close(fd) < 0)))
		die("/dev/null");
	zp_dirfd = open(".", O_RDONLY | O_DIRECTORY);
	if (zp_dirfd < 0)
		die("the working directory");
	setvbuf(stdout, NULL, _IONBF, 0);

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_sigterm;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) < 0)
		die("sigaction SIGTERM");

	zp_shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (zp_shared == MAP_FAILED)
		die("mmap of the shared page");
	zp_shared[0] = STARTING;

	child = fork();
	if (child < 0)
		die("fork");
	if (child > 0)
		launcher(child, pidfile);
	start_pid = getpid();
	atexit(rename_outfile);
	return i;
}

void zp_daemon(void)
{
	if (setsid() < 0)
		die("setsid");
	zp_shared[0] = READY;
	futex(zp_shared, FUTEX_WAKE, 1);
}

int zp_go(void)
{
	return !sigterm_word;
}

void zp_waitsig(void)
{
	while (!sigterm_word)
		futex(&sigterm_word, FUTEX_WAIT, 0);
}

void zp_msg(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vdprintf(2, fmt, ap);
	va_end(ap);
	dprintf(2, "\n");
}

void zp_pass(void)
{
	dprintf(2, "PASS\n");
}

void zp_fail(const char *fmt, ...)
{
	va_list ap;

	dprintf(2, "FAIL: ");
	va_start(ap, fmt);
	vdprintf(2, fmt, ap);
	va_end(ap);
	dprintf(2, "\n");
}
