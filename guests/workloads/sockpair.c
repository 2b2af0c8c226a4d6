/*
 * sockpair: a parent and a child joined by a unix socketpair with data
 * queued both ways, for the restore of a process tree's socketpairs.
 *
 *   sockpair stream|dgram
 *   sockpair offset|append|fifo|memfd|memfd-fd PATH   (sharefd.c)
 *   sockpair memfd-run NAME                            (sharefd.c)
 *   sockpair offset-run PATH                           (sharefd.c)
 *   sockpair fifo-run PATH                             (sharefd.c)
 *   sockpair memfd-map-run NAME                        (sharefd.c)
 *
 * The parent makes a socketpair of the type asked (SOCK_STREAM or
 * SOCK_DGRAM) and two pipes, and forks. The child sends UP_MESSAGES
 * messages up (sizes 1, 38, 75, ...: on a datagram socket each one
 * datagram), says so with a byte on one pipe and waits for a byte on the
 * other; the parent, once the child's byte is there, sends DOWN_MESSAGES
 * down and calls sockpair_checkpoint() — where the host stops it, with
 * both queues full and nothing read. Then the parent lets the child go;
 * each reads what is queued for it (without blocking) and checks the bytes
 * and, on a datagram socket, each datagram's size; the child's exit status
 * says what it found; the parent prints one line and exits 0:
 *
 *   sockpair dgram ok: up 8 messages 1044 bytes, down 3 messages, child exit 0
 *
 * or "sockpair dgram mismatch: ..." naming what differed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define UP_MESSAGES 8
#define DOWN_MESSAGES 3
#define MAX_BYTES 8192

static unsigned char pattern(int message, int i)
{
	return (unsigned char)(message * 7 + i * 13 + 1);
}

static int size_of(int message)
{
	return 1 + 37 * message;
}

static int send_messages(int fd, int count, int base)
{
	unsigned char buf[MAX_BYTES];

	for (int m = 0; m < count; m++) {
		int n = size_of(m);

		for (int i = 0; i < n; i++)
			buf[i] = pattern(base + m, i);
		if (send(fd, buf, (size_t)n, 0) != n)
			return -1;
	}
	return 0;
}

/* Reads what is queued (never blocking) and checks it; returns a description of the first difference, or NULL. */
static const char *check_messages(int fd, int count, int base, int dgram, int *messages, int *bytes)
{
	static char why[128];
	unsigned char buf[MAX_BYTES];
	unsigned char want[MAX_BYTES];
	int total = 0, expected = 0;
	ssize_t n;

	for (int m = 0; m < count; m++) {
		for (int i = 0; i < size_of(m); i++)
			want[expected + i] = pattern(base + m, i);
		expected += size_of(m);
	}
	*messages = 0;
	*bytes = 0;
	while ((n = recv(fd, buf + (dgram ? 0 : total), MAX_BYTES - (size_t)(dgram ? 0 : total), MSG_DONTWAIT)) > 0) {
		if (dgram) {
			if (*messages >= count || n != size_of(*messages)) {
				snprintf(why, sizeof why, "datagram %d has %zd bytes", *messages, n);
				return why;
			}
			if (memcmp(buf, want + total, (size_t)n) != 0) {
				snprintf(why, sizeof why, "datagram %d differs", *messages);
				return why;
			}
		}
		total += (int)n;
		(*messages)++;
	}
	*bytes = total;
	if (n < 0 && errno != EAGAIN) {
		snprintf(why, sizeof why, "recv: errno %d", errno);
		return why;
	}
	if (total != expected) {
		snprintf(why, sizeof why, "%d bytes queued, not %d", total, expected);
		return why;
	}
	if (!dgram && memcmp(buf, want, (size_t)total) != 0)
		return "the bytes differ";
	if (dgram && *messages != count) {
		snprintf(why, sizeof why, "%d datagrams, not %d", *messages, count);
		return why;
	}
	return NULL;
}

/* sharefd.c: the modes that share a file, a FIFO or a memfd across fork. */
int sharefd_main(int argc, char **argv);

/* The checkpoint point: the host stops the parent here (a breakpoint), with both queues full and the child waiting. */
__attribute__((noinline)) void sockpair_checkpoint(void)
{
	__asm__ volatile("" ::: "memory");
}

int main(int argc, char **argv)
{
	int dgram, sv[2], done[2], go[2], status, messages, bytes;
	const char *why;
	char c = 0;
	pid_t child;

	if (argc == 3)
		return sharefd_main(argc, argv);
	if (argc != 2 || (strcmp(argv[1], "stream") != 0 && strcmp(argv[1], "dgram") != 0))
		return 2;
	dgram = strcmp(argv[1], "dgram") == 0;
	setvbuf(stdout, NULL, _IONBF, 0);
	if (socketpair(AF_UNIX, dgram ? SOCK_DGRAM : SOCK_STREAM, 0, sv) < 0 || pipe(done) < 0 || pipe(go) < 0)
		return 1;
	child = fork();
	if (child < 0)
		return 1;
	if (child == 0) {
		close(sv[0]);
		close(done[0]);
		close(go[1]);
		if (send_messages(sv[1], UP_MESSAGES, 0) < 0 || write(done[1], "d", 1) != 1)
			_exit(2);
		if (read(go[0], &c, 1) != 1)
			_exit(4);
		_exit(check_messages(sv[1], DOWN_MESSAGES, 100, dgram, &messages, &bytes) ? 3 : 0);
	}
	close(sv[1]);
	close(done[1]);
	close(go[0]);
	/* Everything the child sends is queued once its byte arrives; then ours. */
	if (read(done[0], &c, 1) != 1 || send_messages(sv[0], DOWN_MESSAGES, 100) < 0)
		return 1;
	sockpair_checkpoint();
	if (write(go[1], "g", 1) != 1)
		return 1;
	why = check_messages(sv[0], UP_MESSAGES, 0, dgram, &messages, &bytes);
	if (waitpid(child, &status, 0) != child)
		status = -1;
	if (why || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		printf("sockpair %s mismatch: up %s, child status 0x%x\n", argv[1], why ? why : "ok", status);
		return 0;
	}
	printf("sockpair %s ok: up %d messages %d bytes, down %d messages, child exit 0\n", argv[1], messages, bytes, DOWN_MESSAGES);
	return 0;
}
