/*
 * zdtm-pipe: a ZDTM-protocol test (protocol.h) whose daemon talks to a child
 * through pipes.
 *
 *   zdtm-pipe --pidfile=T.pid --outfile=T.out
 *
 * Once ready (a session leader), the daemon makes two pipes and forks a
 * child. The child writes PAYLOAD_BYTES of a known pattern up to the
 * daemon, closes its end and blocks reading the pipe down from the daemon.
 * The daemon reads nothing until SIGTERM: whenever the checkpoint comes,
 * bytes are in flight in the pipe up. Woken by SIGTERM the daemon reads the
 * pipe up to its end and checks every byte, writes a word down, and waits
 * for the child; the child exits 0 only if it read that word, its parent is
 * still the daemon and it is still in the daemon's session and group. The
 * daemon prints PASS, or FAIL naming what differed: a restore that drops
 * the queued bytes, gives the child another parent or loses a pipe fails
 * here.
 */
#define _GNU_SOURCE
#include "protocol.h"

#include <errno.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAYLOAD_BYTES 6000
#define DOWN_WORD 0x0d0e0a0du

static unsigned char pattern(unsigned i)
{
	return (unsigned char)(i * 31u + (i >> 8) + 7u);
}

/* Full writes and reads: the pipe may split them. */
static int write_all(int fd, const void *data, size_t n)
{
	const unsigned char *p = data;

	while (n > 0) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* The child: its exit status says what it found (0: all as it was). */
static int child_main(int up, int down, pid_t daemon)
{
	unsigned char buf[PAYLOAD_BYTES];
	uint32_t word = 0;
	ssize_t n;
	unsigned i;

	for (i = 0; i < PAYLOAD_BYTES; i++)
		buf[i] = pattern(i);
	if (write_all(up, buf, sizeof buf) < 0)
		return 2;
	close(up);
	do
		n = read(down, &word, sizeof word);
	while (n < 0 && errno == EINTR);
	if (n != (ssize_t)sizeof word || word != DOWN_WORD)
		return 3;
	if (getppid() != daemon)
		return 4;
	if (getsid(0) != daemon || getpgid(0) != daemon)
		return 5;
	return 0;
}

int main(int argc, char **argv)
{
	int up[2], down[2], status;
	unsigned char buf[PAYLOAD_BYTES + 1];
	size_t got = 0;
	uint32_t word = DOWN_WORD;
	pid_t child, daemon;
	unsigned i;

	zp_init(argc, argv);
	zp_daemon();
	daemon = getpid();
	if (pipe(up) < 0 || pipe(down) < 0) {
		zp_fail("pipe: %d", errno);
		return 1;
	}
	child = fork();
	if (child < 0) {
		zp_fail("fork: %d", errno);
		return 1;
	}
	if (child == 0) {
		close(up[0]);
		close(down[1]);
		_exit(child_main(up[1], down[0], daemon));
	}
	close(up[1]);
	close(down[0]);
	zp_msg("child %d writes %d bytes up the pipe; reading them after SIGTERM", (int)child, PAYLOAD_BYTES);

	zp_waitsig();

	for (;;) {
		ssize_t n = read(up[0], buf + got, sizeof buf - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			zp_fail("reading the pipe up: errno %d", errno);
			return 1;
		}
		if (n == 0)
			break;
		got += (size_t)n;
		if (got == sizeof buf)
			break;
	}
	if (got != PAYLOAD_BYTES) {
		zp_fail("the pipe from the child held %zu bytes%s, not %d", got, got == sizeof buf ? " or more" : "", PAYLOAD_BYTES);
		return 1;
	}
	for (i = 0; i < PAYLOAD_BYTES; i++) {
		if (buf[i] != pattern(i)) {
			zp_fail("byte %u from the pipe is 0x%02x, not 0x%02x", i, buf[i], pattern(i));
			return 1;
		}
	}
	if (write_all(down[1], &word, sizeof word) < 0) {
		zp_fail("writing the pipe down: errno %d", errno);
		return 1;
	}
	if (waitpid(child, &status, 0) != child) {
		zp_fail("waitpid %d: errno %d (no longer its child?)", (int)child, errno);
		return 1;
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		static const char *const why[] = { "", "", "writing up failed", "the word down was not read", "its parent changed", "its session or group changed" };
		int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;

		zp_fail("the child %s (status 0x%x)", code >= 2 && code <= 5 ? why[code] : "failed", status);
		return 1;
	}
	zp_msg("%d bytes through the pipe, the child answered", PAYLOAD_BYTES);
	zp_pass();
	return 0;
}
