/*
 * daemon: a small daemon for kill-and-restore.
 *
 *   daemon LOGFILE
 *
 * Leads its own session (setsid), opens LOGFILE (truncated, written at its
 * offset, not O_APPEND), /dev/null and the log's directory, logs
 * "started pid=P", "waiting", and blocks in FUTEX_WAIT until SIGUSR1 — whose
 * handler sets the futex word and wakes it. Then it checks that it is still
 * pid P leading its own session and process group, that every descriptor is
 * still open with the same flags and the log offset is where its writes
 * left it, and that the wait never failed with anything but EAGAIN or
 * EINTR, logs and prints
 *
 *   woke pid=P same-pid=1 session=1 files=1 futex-errno=0
 *
 * and exits 0 (1 when any check fails). The host checkpoints it while it
 * is blocked in the futex wait, kills it, restores it and sends SIGUSR1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static volatile uint32_t word;
static int futex_errno;

static void on_usr1(int sig)
{
	(void)sig;
	word = 1;
	syscall(SYS_futex, &word, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static off_t written;

static void log_line(int fd, const char *line)
{
	size_t n = strlen(line);

	if (write(fd, line, n) == (ssize_t)n)
		written += (off_t)n;
}

int main(int argc, char **argv)
{
	struct sigaction sa;
	char line[160], dir[256], *slash;
	int log, null, dirfd, logflags, nullflags, same_pid, session, files;
	pid_t pid;
	struct stat st;

	if (argc != 2 || argv[1][0] != '/') {
		fprintf(stderr, "usage: daemon /ABSOLUTE/LOGFILE\n");
		return 2;
	}
	if (setsid() < 0)
		return perror("setsid"), 2;
	pid = getpid();
	log = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0600);
	null = open("/dev/null", O_RDWR);
	snprintf(dir, sizeof dir, "%s", argv[1]);
	slash = strrchr(dir, '/');
	slash[slash == dir ? 1 : 0] = '\0';
	dirfd = open(dir, O_RDONLY | O_DIRECTORY);
	if (log < 0 || null < 0 || dirfd < 0)
		return perror("open"), 2;
	logflags = fcntl(log, F_GETFL);
	nullflags = fcntl(null, F_GETFL);

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGUSR1, &sa, NULL);

	snprintf(line, sizeof line, "started pid=%d\n", (int)pid);
	log_line(log, line);
	log_line(log, "waiting\n");
	while (word == 0) {
		/* EAGAIN (already woken) and EINTR are the only failures a program
		 * may see here; an -ERESTART* leaking out of a restore is not. */
		if (syscall(SYS_futex, &word, FUTEX_WAIT, 0, NULL, NULL, 0) < 0 && errno != EAGAIN && errno != EINTR)
			futex_errno = errno;
	}

	same_pid = getpid() == pid;
	session = getsid(0) == pid && getpgrp() == pid;
	files = fcntl(log, F_GETFL) == logflags && lseek(log, 0, SEEK_CUR) == written && fcntl(null, F_GETFL) == nullflags &&
		fstat(dirfd, &st) == 0 && S_ISDIR(st.st_mode);
	snprintf(line, sizeof line, "woke pid=%d same-pid=%d session=%d files=%d futex-errno=%d\n", (int)getpid(), same_pid,
		 session, files, futex_errno);
	log_line(log, line);
	fputs(line, stdout);
	return same_pid && session && files && !futex_errno ? 0 : 1;
}
