/*
 * The agent port (docs/agent-protocol.md, "Transports"): the same framed
 * protocol served on a virtio-serial port instead of an SSH exec channel, so
 * the host reaches the agent without an SSH handshake. `crh-agent --port
 * NAME`, started by the guest's init, is a supervisor: for every host
 * connection it forks one agent session whose stdin and stdout are the port,
 * exactly as an SSH exec would start one; when the host disconnects the
 * session reads end of input and ends as it would over SSH (its tracees
 * killed). When the session ends first — killed, crashed, or exited — the
 * supervisor tells the host how, in one last frame (id 0, op 0), since the
 * port itself stays open on the host side and would say nothing. A session
 * announces itself first (id 0, op 1): the host waits for that before it
 * sends, so nothing of an earlier connection reaches a new session.
 *
 * Also here: the port lookup BULK_OPEN shares, and the ops that do what
 * the SSH path did with shell commands (CHDIR for `cd DIR &&`, RESEED for
 * `date -s` and `> /dev/urandom`, KMSG for `echo ... > /dev/kmsg`).
 */
#include "agent.h"

#include <poll.h>
#include <sys/stat.h>

/* Frames of id 0 are the supervisor's, never an answer (request ids start
 * at 1): op 1 opens a session (`u32 pid`), op 0 ends it (`i32 exit_code |
 * i32 signal`). */
#define NOTICE_ID 0u
#define SESSION_END_OP 0u
#define SESSION_START_OP 1u
/* How long a wait for the host sleeps between looks when no SIGIO comes. */
#define HOST_POLL_MS 1000

int open_virtio_port(const char *name)
{
	char path[300], found[256];
	struct dirent *e;
	DIR *d;
	int fd = -1;

	d = opendir("/sys/class/virtio-ports");
	if (!d)
		return -1;
	errno = ENOENT;
	while ((e = readdir(d))) {
		int nfd;
		ssize_t n;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
		nfd = open(path, O_RDONLY | O_CLOEXEC);
		if (nfd < 0)
			continue;
		n = read(nfd, found, sizeof found - 1);
		close(nfd);
		if (n <= 0)
			continue;
		found[n] = 0;
		found[strcspn(found, "\n")] = 0;
		if (strcmp(found, name))
			continue;
		snprintf(path, sizeof path, "/dev/%s", e->d_name);
		fd = open(path, O_RDWR | O_CLOEXEC);
		break;
	}
	closedir(d);
	return fd;
}

/* Whether the host end of the port is connected (virtio_console reports a
 * port with no host as POLLHUP). */
static bool host_connected(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	return poll(&p, 1, 0) >= 0 && !(p.revents & POLLHUP);
}

/* Sleeps until the port's host connection changes or data arrives: the
 * driver sends SIGIO for both (O_ASYNC), which is blocked and taken here. */
static void wait_port_event(void)
{
	sigset_t io;
	struct timespec bound = { .tv_sec = HOST_POLL_MS / 1000, .tv_nsec = (HOST_POLL_MS % 1000) * 1000000L };

	sigemptyset(&io);
	sigaddset(&io, SIGIO);
	sigtimedwait(&io, NULL, &bound);
}

static void set_nonblocking(int fd, bool on)
{
	int fl = fcntl(fd, F_GETFL);

	fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

/* After a session that ended under a connected host: the rest of that
 * connection is the ended session's, not the next one's. Discards what the
 * host still sends until it disconnects (it stops sending once it reads the
 * session's end). */
static void drain_until_host_gone(int fd)
{
	uint8_t sink[4096];

	set_nonblocking(fd, true);
	for (;;) {
		ssize_t n = read(fd, sink, sizeof sink);

		if (n == 0)
			break; /* no data and no host */
		if (n < 0 && errno != EAGAIN && errno != EINTR)
			break;
		if (n < 0)
			wait_port_event();
	}
	set_nonblocking(fd, false);
}

/* The session's end as the host reads it; skipped when the host is gone. */
static void send_session_end(int fd, int status)
{
	uint8_t frame[20];
	int32_t code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
	int32_t sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;

	put_le(frame, 16, 4);
	put_le(frame + 4, NOTICE_ID, 4);
	put_le(frame + 8, SESSION_END_OP, 2);
	put_le(frame + 10, 0, 2);
	put_le(frame + 12, (uint32_t)code, 4);
	put_le(frame + 16, (uint32_t)sig, 4);
	set_nonblocking(fd, true);
	if (host_connected(fd) && write_full(fd, frame, sizeof frame) < 0)
		fprintf(stderr, "crh-agent: port: telling the host the session ended: %s\n", strerror(errno));
	set_nonblocking(fd, false);
}

/* The forked session: the port as stdin and stdout, diagnostics to the
 * kernel log (the host's console shows them), in root's home as over SSH. */
static void __attribute__((noreturn)) run_session(int fd, const sigset_t *original_mask, int (*session)(void))
{
	int log = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
	uint8_t start[16];

	sigprocmask(SIG_SETMASK, original_mask, NULL);
	signal(SIGIO, SIG_DFL);
	if (dup2(fd, 0) < 0 || dup2(fd, 1) < 0)
		_exit(1);
	if (log >= 0)
		dup2(log, 2);
	if (chdir("/root") < 0)
		fprintf(stderr, "crh-agent: port: chdir /root: %s\n", strerror(errno));
	/* The host sends nothing before this, so the session's first byte is
	 * its connection's first request. */
	put_le(start, 12, 4);
	put_le(start + 4, NOTICE_ID, 4);
	put_le(start + 8, SESSION_START_OP, 2);
	put_le(start + 10, 0, 2);
	put_le(start + 12, (uint32_t)getpid(), 4);
	if (write_full(1, start, sizeof start) < 0)
		_exit(1);
	session();
	_exit(0); /* a session never returns; should one, it ends here */
}

/*
 * Waits for the session to end. A session busy in a request (a RUN that
 * waits for its tracee) does not read its input, so it would not see the
 * host go: when the host disconnects, the session gets SIGHUP, which ends
 * it, and its tracees with it (PTRACE_O_EXITKILL) — a dropped connection
 * cleans up as the end of input does.
 */
static int wait_session(int fd, pid_t pid)
{
	struct timespec bound = { .tv_sec = HOST_POLL_MS / 1000, .tv_nsec = (HOST_POLL_MS % 1000) * 1000000L };
	sigset_t events;
	bool hung_up = false;
	int status;

	sigemptyset(&events);
	sigaddset(&events, SIGIO);
	sigaddset(&events, SIGCHLD);
	for (;;) {
		pid_t r = waitpid(pid, &status, WNOHANG);

		if (r == pid)
			return status;
		if (r < 0 && errno != EINTR)
			return 0;
		if (!hung_up && !host_connected(fd)) {
			kill(pid, SIGHUP);
			hung_up = true;
		}
		sigtimedwait(&events, NULL, &bound);
	}
}

int serve_port(const char *name, int (*session)(void))
{
	sigset_t original_mask, io;
	int fd = open_virtio_port(name);

	if (fd < 0) {
		fprintf(stderr, "crh-agent: no agent port %s: %s; the host uses SSH\n", name, strerror(errno));
		/* init would start us again at once: stay, doing nothing. */
		for (;;)
			pause();
	}
	sigemptyset(&io);
	sigaddset(&io, SIGIO);
	sigaddset(&io, SIGCHLD);
	sigprocmask(SIG_BLOCK, &io, &original_mask);
	if (fcntl(fd, F_SETOWN, getpid()) < 0 || fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_ASYNC) < 0)
		fprintf(stderr, "crh-agent: port: O_ASYNC: %s; looking every %d ms\n", strerror(errno), HOST_POLL_MS);
	for (;;) {
		pid_t pid;
		int status;

		while (!host_connected(fd))
			wait_port_event();
		pid = fork();
		if (pid < 0) {
			fprintf(stderr, "crh-agent: port: fork: %s\n", strerror(errno));
			sleep(1);
			continue;
		}
		if (pid == 0)
			run_session(fd, &original_mask, session);
		status = wait_session(fd, pid);
		send_session_end(fd, status);
		drain_until_host_gone(fd);
	}
}

/* mkdir -p: every missing directory of `path`, then `path` itself. */
static int make_dirs(char *path)
{
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(path, 0755) < 0 && errno != EEXIST) {
			*p = '/';
			return -1;
		}
		*p = '/';
	}
	return mkdir(path, 0755) < 0 && errno != EEXIST ? -1 : 0;
}

int op_chdir(struct call *c)
{
	char *path = rd_cstr(&c->in, "path");
	int rc = 0;

	if (parsed(c)) {
		free(path);
		return -1;
	}
	if (!path[0])
		rc = fail(c, EINVAL, "path: empty");
	else if (make_dirs(path) < 0)
		rc = fail_errno(c, "mkdir -p %s", path);
	else if (chdir(path) < 0)
		rc = fail_errno(c, "chdir %s", path);
	free(path);
	return rc;
}

int op_reseed(struct call *c)
{
	uint64_t sec = rd_u64(&c->in, "seconds");
	uint32_t nsec = rd_u32(&c->in, "nanoseconds");
	uint32_t n;
	const uint8_t *entropy = rd_bytes(&c->in, "entropy", &n);
	struct timespec now;
	int fd;

	if (parsed(c))
		return -1;
	if (nsec >= 1000000000u)
		return fail(c, EINVAL, "nanoseconds: %u is not below 10^9", nsec);
	now.tv_sec = (time_t)sec;
	now.tv_nsec = (long)nsec;
	if (clock_settime(CLOCK_REALTIME, &now) < 0)
		return fail_errno(c, "clock_settime");
	/* Written, not credited: mixed into the pool as `echo ... > /dev/urandom` does. */
	fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return fail_errno(c, "/dev/urandom");
	if (write_full(fd, entropy, n) < 0) {
		int e = errno;

		close(fd);
		return fail(c, e, "/dev/urandom: writing %u bytes failed", n);
	}
	close(fd);
	return 0;
}

/* A kernel log record's text, prefix included: the kernel takes up to about
 * 1 KiB a record; a phase marker is far shorter. */
#define KMSG_MAX 976

int op_kmsg(struct call *c)
{
	char *record = rd_cstr(&c->in, "record");
	size_t n;
	int fd, rc = 0;

	if (parsed(c)) {
		free(record);
		return -1;
	}
	n = strlen(record);
	/* One write is one record: a newline would make the rest part of it. */
	if (!n)
		rc = fail(c, EINVAL, "record: empty");
	else if (n > KMSG_MAX)
		rc = fail(c, EINVAL, "record: %zu bytes, more than %d", n, KMSG_MAX);
	else if (strchr(record, '\n'))
		rc = fail(c, EINVAL, "record: more than one line");
	else if ((fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC)) < 0)
		rc = fail_errno(c, "/dev/kmsg");
	else {
		char line[KMSG_MAX + 1];
		ssize_t w;

		/* The newline ends the record: without it the kernel keeps the
		 * record open for a continuation, and readers (dmesg) do not
		 * see it until something else is logged. Not write_full:
		 * /dev/kmsg never polls writable, and takes a record whole or
		 * not at all. */
		memcpy(line, record, n);
		line[n] = '\n';
		do
			w = write(fd, line, n + 1);
		while (w < 0 && errno == EINTR);
		if (w < 0)
			rc = fail_errno(c, "/dev/kmsg: writing %zu bytes", n);
		close(fd);
	}
	free(record);
	return rc;
}
