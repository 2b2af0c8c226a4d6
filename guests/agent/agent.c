/*
 * crh-agent: the in-guest ptrace executor of cr-harness.
 *
 * It reads framed requests on stdin, performs one ptrace primitive per
 * request and writes the kernel's answer on stdout. The wire protocol is
 * specified in docs/agent-protocol.md; this file implements exactly that and
 * makes no decisions of its own. Diagnostics go to stderr only, because
 * stdout carries nothing but frames.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <limits.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROTOCOL_VERSION 1u
#define MAX_FRAME (256u * 1024u * 1024u)
/* Bulk data must leave room for the frame header and the fields around it. */
#define MAX_DATA (MAX_FRAME - 4096u)

#define SPAWN_NO_ASLR 1u
#define SPAWN_EXACT_PID 2u

#ifndef __NR_clone3
#define __NR_clone3 435
#endif

#define DR_TRAP_BITS 0xfull /* B0-B3 of DR6 */
#define DR6_BS 0x4000ull /* DR6.BS: the #DB was a single-step trap */
#define DR6_OFFSET offsetof(struct user, u_debugreg[6])
#define X86_EFLAGS_TF 0x100ull

#define SYSCALL_STOP (SIGTRAP | 0x80)
#define EXEC_STOP (SIGTRAP | (PTRACE_EVENT_EXEC << 8))

enum {
	OP_HELLO = 0x01,
	OP_SPAWN = 0x02,
	OP_RUN = 0x03,
	OP_GETREGS = 0x04,
	OP_SETREGS = 0x05,
	OP_GETREGSET = 0x06,
	OP_SETREGSET = 0x07,
	OP_PEEKUSER = 0x08,
	OP_POKEUSER = 0x09,
	OP_READ_FILE = 0x0a,
	OP_READ_MEM = 0x0b,
	OP_WRITE_MEM = 0x0c,
	OP_INJECT_SYSCALL = 0x0d,
	OP_KILL = 0x0e,
	OP_BATCH = 0x0f,
	OP_RSEQ_CONFIG = 0x10,
	OP_SIGNAL = 0x11,
	OP_PEEKSIGINFO = 0x18,
	OP_GETSIGMASK = 0x19,
	OP_SETSIGMASK = 0x1a,
	OP_READLINK = 0x1b,
	OP_LISTDIR = 0x1c,
	OP_STEP = 0x1d,
	OP_DETACH = 0x1e,
	OP_REAP = 0x1f,
	OP_ATTACH = 0x20,
	OP_BULK_OPEN = 0x21,
	OP_READ_MEM_BULK = 0x22,
	OP_WRITE_MEM_BULK = 0x23,
	OP_PAGEMAP = 0x24,
	OP_TRACE_FORKS = 0x28,
	OP_RELEASE = 0x29,
	OP_COUNT
};

enum { RUN_HIT_LIMIT = 1, RUN_EXITED = 2, RUN_KILLED = 3 };
enum { STEP_DONE = 1, STEP_SIGNAL = 2, STEP_EXITED = 3, STEP_KILLED = 4 };

/* ------------------------------------------------------------------------ */
/* Payload reader: every read is checked against what is left, and the first
 * failure is remembered so an op can read all its fields and check once. */

struct rd {
	const uint8_t *p;
	size_t len, off;
	char err[200];
};

static size_t rd_left(const struct rd *r)
{
	return r->len - r->off;
}

static bool rd_need(struct rd *r, uint64_t n, const char *field)
{
	if (r->err[0])
		return false;
	if (n > rd_left(r)) {
		snprintf(r->err, sizeof r->err, "%s: needs %llu bytes but only %zu remain in the payload",
			 field, (unsigned long long)n, rd_left(r));
		return false;
	}
	return true;
}

static uint64_t rd_le(struct rd *r, unsigned n, const char *field)
{
	uint64_t v = 0;

	if (!rd_need(r, n, field))
		return 0;
	for (unsigned i = 0; i < n; i++)
		v |= (uint64_t)r->p[r->off + i] << (8 * i);
	r->off += n;
	return v;
}

static uint16_t rd_u16(struct rd *r, const char *field) { return (uint16_t)rd_le(r, 2, field); }
static uint32_t rd_u32(struct rd *r, const char *field) { return (uint32_t)rd_le(r, 4, field); }
static uint64_t rd_u64(struct rd *r, const char *field) { return rd_le(r, 8, field); }

/* Returns a pointer into the payload; NULL (with *n = 0) once anything failed. */
static const uint8_t *rd_bytes(struct rd *r, const char *field, uint32_t *n)
{
	uint32_t len = rd_u32(r, field);
	const uint8_t *p;

	*n = 0;
	if (!rd_need(r, len, field))
		return NULL;
	p = r->p + r->off;
	r->off += len;
	*n = len;
	return p;
}

/* A NUL-terminated copy, since paths and argv go to the kernel as C strings. */
static char *rd_cstr(struct rd *r, const char *field)
{
	uint32_t n;
	const uint8_t *p = rd_bytes(r, field, &n);
	char *s;

	if (!p)
		return NULL;
	if (memchr(p, 0, n)) {
		snprintf(r->err, sizeof r->err, "%s: contains a NUL byte", field);
		return NULL;
	}
	s = malloc((size_t)n + 1);
	if (!s) {
		snprintf(r->err, sizeof r->err, "%s: out of memory", field);
		return NULL;
	}
	memcpy(s, p, n);
	s[n] = 0;
	return s;
}

/* An array count, refused when even minimal elements could not fit, so no
 * absurd count ever reaches an allocation. */
static uint32_t rd_count(struct rd *r, const char *field, size_t min_elem)
{
	uint32_t n = rd_u32(r, field);

	if (r->err[0])
		return 0;
	if ((uint64_t)n * min_elem > rd_left(r)) {
		snprintf(r->err, sizeof r->err, "%s: count %u cannot fit in the %zu bytes that remain",
			 field, n, rd_left(r));
		return 0;
	}
	return n;
}

static void strv_free(char **v)
{
	if (!v)
		return;
	for (char **p = v; *p; p++)
		free(*p);
	free(v);
}

/* array<string> as a NULL-terminated vector for execve. */
static char **rd_strv(struct rd *r, const char *field)
{
	uint32_t n = rd_count(r, field, 4);
	char **v;
	char name[64];

	if (r->err[0])
		return NULL;
	v = calloc((size_t)n + 1, sizeof *v);
	if (!v) {
		snprintf(r->err, sizeof r->err, "%s: out of memory", field);
		return NULL;
	}
	for (uint32_t i = 0; i < n; i++) {
		snprintf(name, sizeof name, "%s[%u]", field, i);
		v[i] = rd_cstr(r, name);
		if (!v[i]) {
			strv_free(v);
			return NULL;
		}
	}
	return v;
}

/* pid fields are u32 on the wire; anything that is not a positive pid_t would
 * make waitpid() wait for a process group or for any child. */
static pid_t rd_pid(struct rd *r)
{
	uint32_t v = rd_u32(r, "pid");

	if (!r->err[0] && (v == 0 || v > INT32_MAX))
		snprintf(r->err, sizeof r->err, "pid: %u is not a valid process id", v);
	return (pid_t)v;
}

/* ------------------------------------------------------------------------ */
/* Payload writer: a growable buffer; an allocation failure is sticky and
 * turns the whole response into ENOMEM. */

struct wr {
	uint8_t *p;
	size_t len, cap;
	bool oom;
};

static uint8_t *wr_grow(struct wr *w, size_t n)
{
	if (w->oom)
		return NULL;
	if (!n)
		return w->p ? w->p + w->len : NULL;
	if (n > SIZE_MAX - w->len) {
		w->oom = true;
		return NULL;
	}
	if (w->len + n > w->cap) {
		size_t cap = w->cap ? w->cap : 256;
		uint8_t *p;

		while (cap < w->len + n)
			cap = cap > SIZE_MAX / 2 ? w->len + n : cap * 2;
		p = realloc(w->p, cap);
		if (!p) {
			w->oom = true;
			return NULL;
		}
		w->p = p;
		w->cap = cap;
	}
	w->len += n;
	return w->p + w->len - n;
}

static void put_le(uint8_t *p, uint64_t v, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void wr_le(struct wr *w, uint64_t v, unsigned n)
{
	uint8_t *p = wr_grow(w, n);

	if (p)
		put_le(p, v, n);
}

static void wr_u16(struct wr *w, uint16_t v) { wr_le(w, v, 2); }
static void wr_u32(struct wr *w, uint32_t v) { wr_le(w, v, 4); }
static void wr_u64(struct wr *w, uint64_t v) { wr_le(w, v, 8); }

static void wr_raw(struct wr *w, const void *data, size_t n)
{
	uint8_t *p = wr_grow(w, n);

	if (p && n)
		memcpy(p, data, n);
}

static void wr_bytes(struct wr *w, const void *data, size_t n)
{
	wr_u32(w, (uint32_t)n);
	wr_raw(w, data, n);
}

static void wr_str(struct wr *w, const char *s)
{
	wr_bytes(w, s, strlen(s));
}

/* For values whose length is only known afterwards (file contents, regsets):
 * reserve the u32 now and fill it in with wr_patch_u32(). */
static size_t wr_mark(struct wr *w)
{
	wr_u32(w, 0);
	return w->len - 4;
}

static void wr_patch_u32(struct wr *w, size_t at, uint32_t v)
{
	if (!w->oom)
		put_le(w->p + at, v, 4);
}

static void wr_free(struct wr *w)
{
	free(w->p);
	*w = (struct wr){ 0 };
}

/* ------------------------------------------------------------------------ */
/* One request being executed: its payload, its response, its error. */

struct call {
	struct rd in;
	struct wr out;
	int err; /* 0 = success; otherwise the errno sent with status 1 */
	char msg[512];
};

static int __attribute__((format(printf, 3, 4))) fail(struct call *c, int err, const char *fmt, ...)
{
	va_list ap;

	c->err = err ? err : EIO;
	va_start(ap, fmt);
	vsnprintf(c->msg, sizeof c->msg, fmt, ap);
	va_end(ap);
	/* Messages quote request strings (paths); keep them printable ASCII so
	 * they are valid UTF-8 and safe in a log line whatever was sent. */
	for (char *p = c->msg; *p; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
			*p = '?';
	return -1;
}

/* fail() with the current errno and its text appended. */
static int __attribute__((format(printf, 2, 3))) fail_errno(struct call *c, const char *fmt, ...)
{
	int err = errno;
	char what[400];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof what, fmt, ap);
	va_end(ap);
	return fail(c, err, "%s: %s", what, strerror(err));
}

/* Called by every op after reading its fields: a short or overlong payload is
 * EINVAL naming the field, before anything is done to a process. */
static int parsed(struct call *c)
{
	if (c->in.err[0])
		return fail(c, EINVAL, "%s", c->in.err);
	if (rd_left(&c->in))
		return fail(c, EINVAL, "payload: %zu unexpected trailing bytes", rd_left(&c->in));
	return 0;
}

/* Replaces a failed op's partial output with the status-1 payload. */
static uint16_t finish(struct call *c)
{
	if (!c->err && c->out.oom)
		fail(c, ENOMEM, "out of memory building the response");
	if (!c->err)
		return 0;
	wr_free(&c->out);
	wr_le(&c->out, (uint32_t)c->err, 4);
	wr_str(&c->out, c->msg);
	return 1;
}

/* ------------------------------------------------------------------------ */
/* Traced tasks: every thread of every process this agent spawned.
 *
 * SPAWN seizes with PTRACE_O_TRACECLONE, so every thread a tracee creates is
 * traced from before its first instruction; the table learns of it from the
 * PTRACE_EVENT_CLONE stop of its creator (and KILL also adopts whatever
 * /proc/PID/task lists). `stopped` means the task is in a ptrace stop whose
 * wait status was collected and that has not been resumed since: between
 * requests every task of every process is. A process is named by its pid,
 * which is its thread-group id and the tid of its leader. */

struct task {
	pid_t tid;
	pid_t tgid;
	bool stopped;
	/* The process's SIGTRAP handler, as seen at a handler entry RUN stepped
	 * into (0: none seen): what a hit's forced SIGTRAP may have reset. */
	uint64_t trap_handler;
};

static struct task *tasks;
static size_t ntasks, captasks;

static struct task *task_find(pid_t tid)
{
	for (size_t i = 0; i < ntasks; i++)
		if (tasks[i].tid == tid)
			return &tasks[i];
	return NULL;
}

/* A process is tracked while any of its threads is. */
static bool is_tracked(pid_t pid)
{
	for (size_t i = 0; i < ntasks; i++)
		if (tasks[i].tgid == pid)
			return true;
	return false;
}

/* Pointers into the table do not survive task_add() or task_remove(). */
static bool task_add(pid_t tid, pid_t tgid, bool stopped)
{
	struct task *t = task_find(tid);

	if (t) {
		t->tgid = tgid;
		t->stopped = stopped;
		return true;
	}
	if (ntasks == captasks) {
		size_t cap = captasks ? captasks * 2 : 16;
		struct task *p = realloc(tasks, cap * sizeof *p);

		if (!p)
			return false;
		tasks = p;
		captasks = cap;
	}
	tasks[ntasks++] = (struct task){ .tid = tid, .tgid = tgid, .stopped = stopped };
	return true;
}

static void task_remove(pid_t tid)
{
	for (size_t i = 0; i < ntasks; i++)
		if (tasks[i].tid == tid) {
			tasks[i] = tasks[--ntasks];
			return;
		}
}

/* A collected wait status: a termination forgets the task (it is reaped),
 * any other status is a stop. */
static void note_status(pid_t tid, int status)
{
	struct task *t;

	if (WIFEXITED(status) || WIFSIGNALED(status)) {
		task_remove(tid);
		return;
	}
	t = task_find(tid);
	if (t)
		t->stopped = true;
}

/* PTRACE_CONT (or another resuming request) that keeps the table right. */
static int resume(pid_t tid, int request, int sig)
{
	struct task *t;

	if (ptrace((enum __ptrace_request)request, tid, 0, (void *)(long)sig) < 0)
		return -1;
	t = task_find(tid);
	if (t)
		t->stopped = false;
	return 0;
}

/* The thread group of a task, from /proc/TID/status; -1 when unreadable. */
static pid_t tgid_of(pid_t tid)
{
	char path[64], line[256];
	pid_t tgid = -1;
	FILE *f;

	snprintf(path, sizeof path, "/proc/%d/status", (int)tid);
	f = fopen(path, "re");
	if (!f)
		return -1;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "Tgid: %d", &tgid) == 1)
			break;
	fclose(f);
	return tgid;
}

/* Whether a task is a zombie (or gone). A thread-group leader that exited
 * before its other threads stays a zombie, unreported by waitpid, until the
 * last of them is reaped: nothing can stop it and nothing should wait for it. */
static bool is_zombie(pid_t tid)
{
	char path[64], buf[512], *p;
	ssize_t n;
	int fd;

	snprintf(path, sizeof path, "/proc/%d/stat", (int)tid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return true;
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return true;
	buf[n] = 0;
	p = strrchr(buf, ')');
	return !p || p[1] != ' ' || p[2] == 'Z' || p[2] == 'X';
}

/* Adds the threads /proc/PID/task lists that the table lacks. A thread that
 * is not our tracee is dropped again by the first waitpid (ECHILD). */
static void adopt_threads(pid_t pid)
{
	char path[64];
	struct dirent *e;
	DIR *d;

	snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
	d = opendir(path);
	if (!d)
		return;
	while ((e = readdir(d)) != NULL) {
		char *end;
		long tid = strtol(e->d_name, &end, 10);

		if (*end || tid <= 0 || tid > INT32_MAX || task_find((pid_t)tid))
			continue;
		task_add((pid_t)tid, pid, false);
	}
	closedir(d);
}

/* Blocking waitpid for one task. */
static int wait_for(pid_t pid, int *status)
{
	pid_t r;

	do
		r = waitpid(pid, status, __WALL);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return -1;
	note_status(pid, *status);
	return 0;
}

static sigset_t sigchld_set;

/* A wait status collected out of turn (after a step into a signal handler
 * that met another stop first): wait_any hands it out before probing. */
static struct {
	pid_t tid;
	int status;
	bool set;
} stashed;

static void stash_status(pid_t tid, int status)
{
	stashed.tid = tid;
	stashed.status = status;
	stashed.set = true;
}

/*
 * The next wait status of any thread of process `tgid`: 1 = got one (*tid,
 * *status), 0 = `deadline` passed (NULL: wait for ever), -1 = error, ECHILD
 * once the process has no task left. Each round probes every thread with
 * WNOHANG; SIGCHLD stays blocked, so a stop that happens after a probe
 * leaves SIGCHLD pending and sigtimedwait() returns at once: no lost wakeup.
 * A SIGCHLD for another process's tracee only costs a round.
 */
static int wait_any(pid_t tgid, pid_t *tid, int *status, const struct timespec *deadline)
{
	if (stashed.set) {
		struct task *t = task_find(stashed.tid);

		if (!t || t->tgid == tgid || WIFEXITED(stashed.status) || WIFSIGNALED(stashed.status)) {
			stashed.set = false;
			*tid = stashed.tid;
			*status = stashed.status;
			return 1;
		}
	}
	for (;;) {
		struct timespec now, left;
		bool any = false;
		size_t i = 0;

		while (i < ntasks) {
			pid_t t = tasks[i].tid, r;

			if (tasks[i].tgid != tgid) {
				i++;
				continue;
			}
			do
				r = waitpid(t, status, __WALL | WNOHANG);
			while (r < 0 && errno == EINTR);
			if (r == t) {
				note_status(t, *status);
				*tid = t;
				return 1;
			}
			if (r < 0 && errno == ECHILD) {
				/* Not (or no longer) ours: e.g. the former tid of a
				 * thread that exec'd and took the leader's. */
				task_remove(t);
				continue;
			}
			if (r < 0)
				return -1;
			any = true;
			i++;
		}
		if (!any) {
			errno = ECHILD;
			return -1;
		}
		if (!deadline) {
			sigwaitinfo(&sigchld_set, NULL);
			continue;
		}
		clock_gettime(CLOCK_MONOTONIC, &now);
		left.tv_sec = deadline->tv_sec - now.tv_sec;
		left.tv_nsec = deadline->tv_nsec - now.tv_nsec;
		if (left.tv_nsec < 0) {
			left.tv_nsec += 1000000000L;
			left.tv_sec--;
		}
		if (left.tv_sec < 0 || (left.tv_sec == 0 && left.tv_nsec == 0))
			return 0;
		/* EAGAIN (timed out) and EINTR both just loop to probe again. */
		sigtimedwait(&sigchld_set, NULL, &left);
	}
}

static void deadline_in(struct timespec *deadline, uint32_t ms)
{
	clock_gettime(CLOCK_MONOTONIC, deadline);
	deadline->tv_sec += ms / 1000;
	deadline->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (deadline->tv_nsec >= 1000000000L) {
		deadline->tv_nsec -= 1000000000L;
		deadline->tv_sec++;
	}
}

/* Drops every task of a process from the table. */
static void forget_process(pid_t pid)
{
	for (size_t i = 0; i < ntasks;) {
		if (tasks[i].tgid == pid)
			tasks[i] = tasks[--ntasks];
		else
			i++;
	}
}

/*
 * SIGKILL to the process and every thread reaped, the leader last (the
 * kernel reports a leader only once its thread group is empty). *status is
 * the leader's wait status.
 */
static int kill_and_reap(pid_t pid, int *status)
{
	int st = 0;
	pid_t tid;

	if (!task_find(pid) && !task_add(pid, pid, false))
		return -1;
	adopt_threads(pid);
	kill(pid, SIGKILL);
	for (;;) {
		if (wait_any(pid, &tid, &st, NULL) < 0)
			return -1;
		if (WIFEXITED(st) || WIFSIGNALED(st)) {
			if (tid == pid)
				break;
			continue;
		}
		/* A stop that raced with the SIGKILL: resuming lets it die. */
		ptrace(PTRACE_CONT, tid, 0, 0);
	}
	forget_process(pid);
	if (status)
		*status = st;
	return 0;
}

static void kill_all(void)
{
	while (ntasks) {
		pid_t pid = tasks[ntasks - 1].tgid;

		if (kill_and_reap(pid, NULL) < 0)
			forget_process(pid);
	}
}

/* ------------------------------------------------------------------------ */
/* ptrace helpers. */

static int peek_user(pid_t pid, uint64_t off, uint64_t *val)
{
	long v;

	errno = 0;
	v = ptrace(PTRACE_PEEKUSER, pid, (void *)off, 0);
	if (v == -1 && errno)
		return -1;
	*val = (uint64_t)v;
	return 0;
}

static int peek_data(pid_t pid, uint64_t addr, uint64_t *val)
{
	long v;

	errno = 0;
	v = ptrace(PTRACE_PEEKDATA, pid, (void *)addr, 0);
	if (v == -1 && errno)
		return -1;
	*val = (uint64_t)v;
	return 0;
}

static int poke_data(pid_t pid, uint64_t addr, uint64_t val)
{
	return ptrace(PTRACE_POKEDATA, pid, (void *)addr, (void *)val) < 0 ? -1 : 0;
}

/*
 * The word-sized window that contains [addr, addr+n), n <= 8: the word at
 * addr, or, when that runs off the end of a mapping, the word ending at
 * addr+n. PEEKDATA/POKEDATA move whole words, and a patch near the end of
 * the last mapped page must not touch the next, unmapped one.
 */
static int word_window(pid_t pid, uint64_t addr, size_t n, uint64_t *base, uint64_t *word)
{
	if (peek_data(pid, addr, word) == 0) {
		*base = addr;
		return 0;
	}
	if (n >= 8 || addr + n < 8)
		return -1;
	*base = addr + n - 8;
	return peek_data(pid, *base, word);
}

/* Memory writes through POKEDATA, which is allowed to write read-only private
 * mappings even where /proc/PID/mem is not (proc_mem.force_override). */
static int poke_bytes(pid_t pid, uint64_t addr, const uint8_t *src, size_t n)
{
	uint64_t word, base;

	for (; n >= 8; addr += 8, src += 8, n -= 8) {
		memcpy(&word, src, 8);
		if (poke_data(pid, addr, word) < 0)
			return -1;
	}
	if (!n)
		return 0;
	if (word_window(pid, addr, n, &base, &word) < 0)
		return -1;
	memcpy((uint8_t *)&word + (addr - base), src, n);
	return poke_data(pid, base, word);
}

/*
 * /proc/PID/mem is open to root for any process, running or not. A cheap
 * ptrace request first gives READ_MEM and WRITE_MEM what PEEKDATA/POKEDATA
 * would: ESRCH unless pid is our tracee and in a ptrace stop, so a wrong pid
 * cannot scribble over some other guest process.
 */
static int open_mem(pid_t pid, int flags)
{
	char path[64];
	uint64_t ignored;

	if (peek_user(pid, 0, &ignored) < 0)
		return -1;
	snprintf(path, sizeof path, "/proc/%d/mem", (int)pid);
	return open(path, flags | O_CLOEXEC);
}

static bool range_wraps(uint64_t addr, uint64_t len)
{
	return len && addr + len - 1 < addr;
}

/* ------------------------------------------------------------------------ */
/* The bulk data port (docs/agent-protocol.md, "Bulk data"): a virtio-serial
 * port on which page data crosses as frames of a 16-byte header (magic,
 * tag, length) and the bytes, while the request and its answer stay on
 * stdin/stdout. Each READ_MEM_BULK the agent parses writes exactly one
 * frame, each WRITE_MEM_BULK it sees — executed, failed or skipped in a
 * BATCH — consumes exactly one: the two ends never lose step. */

#define BULK_MAGIC 0x4b4c5542u /* "BULK" */
#define BULK_HEADER 16u
#define BULK_CHUNK (1u << 20)
#define PAGE_BYTES 4096u

static ssize_t read_full(int fd, void *buf, size_t n);
static int write_full(int fd, const void *buf, size_t n);

static int bulk_fd = -1;
static uint8_t *bulk_buf;

struct bulk_range {
	uint64_t addr, len;
};

/* Reads pid, tag and the ranges of a *_MEM_BULK request; *total is their sum. */
static struct bulk_range *rd_bulk_ranges(struct call *c, pid_t *pid, uint32_t *tag, uint32_t *n, uint64_t *total)
{
	struct bulk_range *ranges = NULL;
	char name[48];

	*pid = rd_pid(&c->in);
	*tag = rd_u32(&c->in, "tag");
	*n = rd_count(&c->in, "ranges", 16);
	*total = 0;
	if (!c->in.err[0] && *n) {
		ranges = calloc(*n, sizeof *ranges);
		if (!ranges)
			snprintf(c->in.err, sizeof c->in.err, "ranges: cannot allocate %u entries", *n);
	}
	for (uint32_t i = 0; ranges && i < *n && !c->in.err[0]; i++) {
		snprintf(name, sizeof name, "ranges[%u].address", i);
		ranges[i].addr = rd_u64(&c->in, name);
		snprintf(name, sizeof name, "ranges[%u].length", i);
		ranges[i].len = rd_u64(&c->in, name);
		if (c->in.err[0])
			break;
		if (range_wraps(ranges[i].addr, ranges[i].len) || ranges[i].len > (1ull << 40) || *total + ranges[i].len < *total)
			snprintf(c->in.err, sizeof c->in.err, "ranges[%u]: 0x%llx + %llu wraps or is too long", i,
				 (unsigned long long)ranges[i].addr, (unsigned long long)ranges[i].len);
		*total += ranges[i].len;
	}
	return ranges;
}

static void put_bulk_header(uint8_t *h, uint32_t tag, uint64_t len)
{
	put_le(h, BULK_MAGIC, 4);
	put_le(h + 4, tag, 4);
	put_le(h + 8, len, 8);
}

/* Reads one frame header; returns its length, or -1 with errno (EPROTO: not a frame). */
static int64_t get_bulk_header(uint32_t *tag)
{
	uint8_t h[BULK_HEADER];
	uint64_t len = 0;
	ssize_t n = read_full(bulk_fd, h, sizeof h);

	if (n != (ssize_t)sizeof h) {
		if (n >= 0)
			errno = EPIPE;
		return -1;
	}
	for (unsigned i = 0; i < 8; i++)
		len |= (uint64_t)h[8 + i] << (8 * i);
	*tag = (uint32_t)h[4] | (uint32_t)h[5] << 8 | (uint32_t)h[6] << 16 | (uint32_t)h[7] << 24;
	if (((uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 24) != BULK_MAGIC ||
	    len > (1ull << 40)) {
		errno = EPROTO;
		return -1;
	}
	return (int64_t)len;
}

/* A port that lost step is closed: every later bulk request fails ENOTCONN. */
static void bulk_lost(void)
{
	if (bulk_fd >= 0)
		close(bulk_fd);
	bulk_fd = -1;
}

/* Reads and drops `len` bytes of the port; -1 with errno when it ends. */
static int bulk_drain(uint64_t len)
{
	while (len) {
		size_t k = len < BULK_CHUNK ? (size_t)len : BULK_CHUNK;

		if (read_full(bulk_fd, bulk_buf, k) != (ssize_t)k) {
			errno = EPIPE;
			return -1;
		}
		len -= k;
	}
	return 0;
}

/* What a BATCH does for a WRITE_MEM_BULK it does not execute: consume its frame. */
static void bulk_skip_frame(void)
{
	uint32_t tag;
	int64_t len;

	if (bulk_fd < 0)
		return;
	len = get_bulk_header(&tag);
	if (len < 0 || bulk_drain((uint64_t)len) < 0)
		bulk_lost();
}

static int op_bulk_open(struct call *c)
{
	char *name = rd_cstr(&c->in, "name");
	char path[300], found[256];
	struct dirent *e;
	DIR *d;
	int fd = -1;

	if (parsed(c)) {
		free(name);
		return -1;
	}
	if (bulk_fd >= 0) {
		free(name);
		return 0;
	}
	if (!bulk_buf && !(bulk_buf = malloc(BULK_CHUNK))) {
		free(name);
		return fail(c, ENOMEM, "bulk buffer");
	}
	d = opendir("/sys/class/virtio-ports");
	if (!d) {
		free(name);
		return fail_errno(c, "/sys/class/virtio-ports (no virtio_console?)");
	}
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
	if (fd < 0) {
		fail_errno(c, "virtio port %s", name);
		free(name);
		return -1;
	}
	free(name);
	bulk_fd = fd;
	return 0;
}

static int op_read_mem_bulk(struct call *c)
{
	uint8_t h[BULK_HEADER];
	uint32_t tag, n;
	uint64_t total;
	pid_t pid;
	struct bulk_range *ranges = rd_bulk_ranges(c, &pid, &tag, &n, &total);
	int fd = -1;

	if (bulk_fd < 0) {
		free(ranges);
		return fail(c, ENOTCONN, "no bulk port open (BULK_OPEN)");
	}
	if (parsed(c))
		total = 0;
	/* The frame is written whatever happens next: the host reads one per request. */
	put_bulk_header(h, tag, total);
	if (write_full(bulk_fd, h, sizeof h) < 0) {
		bulk_lost();
		free(ranges);
		return fail_errno(c, "bulk port");
	}
	if (!c->err && (fd = open_mem(pid, O_RDONLY)) < 0)
		fail_errno(c, "READ_MEM_BULK %d", (int)pid);
	for (uint32_t i = 0; i < n && total; i++) {
		for (uint64_t done = 0; done < ranges[i].len;) {
			size_t k = ranges[i].len - done < BULK_CHUNK ? (size_t)(ranges[i].len - done) : BULK_CHUNK;
			size_t got = 0;

			while (fd >= 0 && !c->err && got < k) {
				ssize_t r = pread(fd, bulk_buf + got, k - got, (off_t)(ranges[i].addr + done + got));

				if (r < 0 && errno == EINTR)
					continue;
				if (r <= 0) {
					if (r == 0)
						errno = EIO;
					fail_errno(c, "read 0x%llx: only %zu of %llu bytes readable",
						   (unsigned long long)ranges[i].addr, (size_t)(done + got),
						   (unsigned long long)ranges[i].len);
					break;
				}
				got += (size_t)r;
			}
			/* What could not be read goes as zeros; the request fails. */
			memset(bulk_buf + got, 0, k - got);
			if (write_full(bulk_fd, bulk_buf, k) < 0) {
				bulk_lost();
				if (fd >= 0)
					close(fd);
				free(ranges);
				c->err = 0;
				return fail_errno(c, "bulk port");
			}
			done += k;
		}
	}
	if (fd >= 0)
		close(fd);
	free(ranges);
	if (c->err)
		return -1;
	wr_u64(&c->out, total);
	return 0;
}

static int op_write_mem_bulk(struct call *c)
{
	uint32_t tag, n, frame_tag;
	uint64_t total;
	pid_t pid;
	struct bulk_range *ranges = rd_bulk_ranges(c, &pid, &tag, &n, &total);
	int64_t len;
	int fd = -1;

	if (bulk_fd < 0) {
		free(ranges);
		return fail(c, ENOTCONN, "no bulk port open (BULK_OPEN)");
	}
	len = get_bulk_header(&frame_tag);
	if (len < 0) {
		bulk_lost();
		free(ranges);
		return fail_errno(c, "bulk port: no frame header");
	}
	if (parsed(c) || frame_tag != tag || (uint64_t)len != total) {
		if (!c->err)
			fail(c, EPROTO, "bulk frame tag %u with %lld bytes, request tag %u with %llu", frame_tag,
			     (long long)len, tag, (unsigned long long)total);
		if (frame_tag != tag)
			bulk_lost();
		else if (bulk_drain((uint64_t)len) < 0)
			bulk_lost();
		free(ranges);
		return -1;
	}
	if ((fd = open_mem(pid, O_WRONLY)) < 0)
		fail_errno(c, "WRITE_MEM_BULK %d", (int)pid);
	for (uint32_t i = 0; i < n; i++) {
		for (uint64_t done = 0; done < ranges[i].len;) {
			size_t k = ranges[i].len - done < BULK_CHUNK ? (size_t)(ranges[i].len - done) : BULK_CHUNK;
			uint64_t at = ranges[i].addr + done;
			size_t put = 0;

			if (read_full(bulk_fd, bulk_buf, k) != (ssize_t)k) {
				bulk_lost();
				if (fd >= 0)
					close(fd);
				free(ranges);
				c->err = 0;
				errno = EPIPE;
				return fail_errno(c, "bulk port ended inside a frame");
			}
			while (fd >= 0 && !c->err && put < k) {
				ssize_t r = pwrite(fd, bulk_buf + put, k - put, (off_t)(at + put));

				if (r < 0 && errno == EINTR)
					continue;
				if (r <= 0)
					break;
				put += (size_t)r;
			}
			/* /proc/PID/mem refuses read-only mappings when the kernel
			 * restricts FOLL_FORCE there; POKEDATA does not. */
			if (fd >= 0 && !c->err && put < k && poke_bytes(pid, at + put, bulk_buf + put, k - put) < 0)
				fail_errno(c, "write 0x%llx (%zu bytes): failed after %zu bytes", (unsigned long long)at, k,
					   put);
			done += k;
		}
	}
	if (fd >= 0)
		close(fd);
	free(ranges);
	return c->err ? -1 : 0;
}

/* One byte per page of [start, start + pages * 4096): bit 0 present, bit 1
 * swapped, bit 2 a file page or shared anonymous memory, from
 * /proc/PID/pagemap (bits 63, 62 and 61). A page with neither of the first two was
 * never touched, or its contents were dropped: it reads as the mapping's
 * backing (zeros, or the file). */
static int op_pagemap(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	uint64_t start = rd_u64(&c->in, "start");
	uint32_t pages = rd_u32(&c->in, "pages");
	uint64_t *entries;
	uint8_t *out;
	char path[64];
	size_t done = 0;
	uint64_t ignored;
	int fd;

	if (parsed(c))
		return -1;
	if (start % PAGE_BYTES || pages > MAX_DATA / 8 || range_wraps(start, (uint64_t)pages * PAGE_BYTES))
		return fail(c, EINVAL, "start/pages: 0x%llx + %u pages is not a page-aligned range within the frame limit",
			    (unsigned long long)start, pages);
	/* Only a stopped tracee of ours, as READ_MEM. */
	if (peek_user(pid, 0, &ignored) < 0)
		return fail_errno(c, "PAGEMAP %d", (int)pid);
	entries = malloc((size_t)pages * 8 + 1);
	if (!entries)
		return fail(c, ENOMEM, "pages: cannot allocate %u entries", pages);
	snprintf(path, sizeof path, "/proc/%d/pagemap", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		free(entries);
		return fail_errno(c, "%s", path);
	}
	while (done < (size_t)pages * 8) {
		ssize_t r = pread(fd, (uint8_t *)entries + done, (size_t)pages * 8 - done, (off_t)(start / PAGE_BYTES * 8 + done));

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			if (r == 0)
				errno = EIO;
			close(fd);
			free(entries);
			return fail_errno(c, "%s at page 0x%llx", path, (unsigned long long)(start / PAGE_BYTES));
		}
		done += (size_t)r;
	}
	close(fd);
	wr_u32(&c->out, pages);
	out = wr_grow(&c->out, pages);
	if (c->out.oom) {
		free(entries);
		return fail(c, ENOMEM, "pages: cannot allocate %u bytes", pages);
	}
	for (uint32_t i = 0; i < pages; i++)
		out[i] = (uint8_t)((entries[i] >> 63 & 1) | (entries[i] >> 62 & 1) << 1 | (entries[i] >> 61 & 1) << 2);
	free(entries);
	return 0;
}

/* ------------------------------------------------------------------------ */
/* Operations, one function each, in protocol order. */

static int op_hello(struct call *c)
{
	struct utsname u;

	if (parsed(c))
		return -1;
	if (uname(&u) < 0)
		return fail_errno(c, "uname");
	wr_u32(&c->out, PROTOCOL_VERSION);
	wr_str(&c->out, u.release);
	wr_str(&c->out, u.machine);
	wr_u32(&c->out, (uint32_t)sysconf(_SC_PAGESIZE));
	wr_u32(&c->out, (uint32_t)getpid());
	return 0;
}

/* Runs in the forked child: nothing here may return. */
static void __attribute__((noreturn)) spawn_child(int sync_fd, int err_fd, int in_fd, int out_fd, uint32_t flags,
						   const char *path, char **argv, char **envp)
{
	sigset_t none;
	char go;
	ssize_t n;
	int e;

	/* The agent's blocked SIGCHLD and ignored SIGPIPE (and whatever sshd
	 * left ignored) would otherwise survive execve into the workload. */
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	for (int s = 1; s < NSIG; s++)
		signal(s, SIG_DFL);

	/* Nothing the workload does may happen before the agent is its tracer. */
	do
		n = read(sync_fd, &go, 1);
	while (n < 0 && errno == EINTR);
	if (n != 1)
		_exit(127);

	if ((flags & SPAWN_NO_ASLR) &&
	    personality((unsigned long)personality(0xffffffff) | ADDR_NO_RANDOMIZE) < 0)
		goto failed;
	if (dup2(in_fd, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(out_fd, 2) < 0)
		goto failed;
	/* Only stdio reaches the workload: whatever the agent inherited (from
	 * sshd, or a test runner's pipes) would otherwise end up in checkpoints.
	 * err_fd stays until execve closes it. close_range: Linux 5.9. */
	if ((err_fd > 3 && syscall(SYS_close_range, 3u, (unsigned)err_fd - 1, 0u) < 0) ||
	    syscall(SYS_close_range, (unsigned)err_fd + 1, ~0u, 0u) < 0)
		goto failed;
	execve(path, argv, envp);
failed:
	e = errno;
	/* err_fd is CLOEXEC: EOF on it tells the parent execve succeeded. */
	if (write(err_fd, &e, sizeof e) < 0)
		_exit(126);
	_exit(127);
}

/* struct clone_args up to set_tid_size (CLONE_ARGS_SIZE_VER1, Linux 5.5). */
struct clone_args_v1 {
	uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size;
};

/*
 * fork() with the child's pid chosen: clone3 with set_tid, so a restored
 * process sees the pid its checkpoint was taken with. The raw syscall skips
 * glibc's fork bookkeeping; the child only makes plain system calls before
 * execve, which that bookkeeping does not affect.
 */
static pid_t fork_with_pid(pid_t want)
{
	pid_t tid = want;
	struct clone_args_v1 args;

	memset(&args, 0, sizeof args);
	args.exit_signal = SIGCHLD;
	args.set_tid = (uint64_t)(uintptr_t)&tid;
	args.set_tid_size = 1;
	return (pid_t)syscall(__NR_clone3, &args, sizeof args);
}

static int spawn(struct call *c, uint32_t flags, pid_t want, const char *path, char **argv, char **envp,
		 const char *out_path)
{
	int in_fd = -1, out_fd = -1, sync_p[2] = { -1, -1 }, err_p[2] = { -1, -1 };
	int rc = -1, st, child_errno;
	pid_t pid;

	in_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (in_fd < 0) {
		fail_errno(c, "open /dev/null");
		goto out;
	}
	/* Opened here rather than in the child so the error names the path. */
	out_fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (out_fd < 0) {
		fail_errno(c, "stdout_path: open %s", out_path);
		goto out;
	}
	if (pipe2(sync_p, O_CLOEXEC) < 0 || pipe2(err_p, O_CLOEXEC) < 0) {
		fail_errno(c, "pipe2");
		goto out;
	}
	pid = want ? fork_with_pid(want) : fork();
	if (pid < 0 && want && errno == EEXIST) {
		fail(c, EEXIST, "pid: %d is in use by another process", (int)want);
		goto out;
	}
	if (pid < 0) {
		/* EPERM: set_tid needs CAP_CHECKPOINT_RESTORE; ENOSYS: kernel < 5.5. */
		fail_errno(c, want ? "clone3 with set_tid %d" : "fork", (int)want);
		goto out;
	}
	if (pid == 0)
		spawn_child(sync_p[0], err_p[1], in_fd, out_fd, flags, path, argv, envp);

	close(err_p[1]);
	err_p[1] = -1;
	/* Tracked from here on, so every failure below reaps it in one place. */
	if (!task_add(pid, pid, false)) {
		fail(c, ENOMEM, "out of memory tracking pid %d", (int)pid);
		kill(pid, SIGKILL);
		while (waitpid(pid, &st, __WALL) < 0 && errno == EINTR)
			;
		goto out;
	}
	/* TRACECLONE: every thread the program creates is traced from its start. */
	if (ptrace(PTRACE_SEIZE, pid, 0,
		   (void *)(long)(PTRACE_O_EXITKILL | PTRACE_O_TRACEEXEC | PTRACE_O_TRACESYSGOOD |
				  PTRACE_O_TRACECLONE)) < 0) {
		fail_errno(c, "PTRACE_SEIZE %d", (int)pid);
		kill_and_reap(pid, NULL);
		goto out;
	}
	if (write(sync_p[1], "g", 1) != 1) {
		fail_errno(c, "releasing the child");
		kill_and_reap(pid, NULL);
		goto out;
	}

	/* Waiting comes before reading err_p: a signal stop before execve would
	 * otherwise leave both sides blocked. */
	for (;;) {
		int sig = 0;

		if (wait_for(pid, &st) < 0) {
			fail_errno(c, "waitpid %d", (int)pid);
			kill_and_reap(pid, NULL);
			goto out;
		}
		if (WIFEXITED(st) || WIFSIGNALED(st)) {
			if (read(err_p[0], &child_errno, sizeof child_errno) == (ssize_t)sizeof child_errno)
				fail(c, child_errno, "exec %s: %s", path, strerror(child_errno));
			else
				fail(c, ECHILD, "child died before exec (wait status 0x%x)", st);
			goto out;
		}
		if (st >> 8 == EXEC_STOP)
			break;
		if (st >> 16 == 0 && WSTOPSIG(st) != SYSCALL_STOP)
			sig = WSTOPSIG(st);
		if (ptrace(PTRACE_CONT, pid, 0, (void *)(long)sig) < 0) {
			fail_errno(c, "PTRACE_CONT %d before exec", (int)pid);
			kill_and_reap(pid, NULL);
			goto out;
		}
	}

	/* At the execve syscall-exit stop registers are the new program's entry
	 * state and setting them decides what it resumes with; at the exec event
	 * the syscall's return path would still overwrite rax. */
	if (ptrace(PTRACE_SYSCALL, pid, 0, 0) < 0 || wait_for(pid, &st) < 0) {
		fail_errno(c, "stepping %d to the execve syscall-exit stop", (int)pid);
		kill_and_reap(pid, NULL);
		goto out;
	}
	if (!WIFSTOPPED(st) || st >> 8 != SYSCALL_STOP) {
		fail(c, EPROTO, "expected the execve syscall-exit stop, got wait status 0x%x", st);
		kill_and_reap(pid, NULL);
		goto out;
	}
	wr_u32(&c->out, (uint32_t)pid);
	rc = 0;
out:
	if (in_fd >= 0)
		close(in_fd);
	if (out_fd >= 0)
		close(out_fd);
	for (int i = 0; i < 2; i++) {
		if (sync_p[i] >= 0)
			close(sync_p[i]);
		if (err_p[i] >= 0)
			close(err_p[i]);
	}
	return rc;
}

/*
 * The agent is a child subreaper (main): a program that daemonizes leaves
 * its daemon to the agent when its parent exits, so a run's leftovers stay
 * findable below the agent (the host kills them between runs). Their
 * zombies are reaped here, before each SPAWN, so none keeps a pid taken;
 * tracked tasks are left to the waits that expect them.
 */
static void reap_orphans(void)
{
	char path[64];
	FILE *f;
	int child, st;

	snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)getpid());
	f = fopen(path, "re");
	if (!f)
		return;
	while (fscanf(f, "%d", &child) == 1)
		if (!is_tracked(child))
			waitpid(child, &st, __WALL | WNOHANG);
	fclose(f);
}

static int op_spawn(struct call *c)
{
	uint32_t flags = rd_u32(&c->in, "flags");
	char *path = rd_cstr(&c->in, "path");
	char **argv = rd_strv(&c->in, "argv");
	char **envp = rd_strv(&c->in, "envp");
	char *out_path = rd_cstr(&c->in, "stdout_path");
	/* The pid field exists only with its flag, so older requests stay valid. */
	pid_t want = flags & SPAWN_EXACT_PID ? rd_pid(&c->in) : 0;
	int rc = -1;

	if (parsed(c))
		goto out;
	reap_orphans();
	if (flags & ~(SPAWN_NO_ASLR | SPAWN_EXACT_PID)) {
		fail(c, EINVAL, "flags: unknown bits 0x%x", flags & ~(SPAWN_NO_ASLR | SPAWN_EXACT_PID));
		goto out;
	}
	rc = spawn(c, flags, want, path, argv, envp, out_path);
out:
	free(path);
	strv_free(argv);
	strv_free(envp);
	free(out_path);
	return rc;
}

/* ------------------------------------------------------------------------ */
/* Breakpoints a program cannot feel.
 *
 * Our execute breakpoint (DR0-3 set through POKEUSER) stops a thread with a
 * SIGTRAP the kernel *forces* (force_sig_fault). If the program has SIGTRAP
 * blocked at that moment — as it has inside its own SIGTRAP handler — the
 * kernel resets its SIGTRAP disposition to SIG_DFL and unblocks it before
 * the tracer sees the stop: suppressing that SIGTRAP is not enough, the
 * program's next SIGTRAP of its own kills it. And when the program's own
 * single-step (TF) completes on the instruction our breakpoint is on, one
 * #DB reports both (DR6 B0 and BS) and its one SIGTRAP is the program's too.
 *
 * So, while a breakpoint is armed: a SIGTRAP RUN delivers to the program is
 * delivered with PTRACE_SINGLESTEP, which stops the thread at its handler's
 * first instruction (the kernel's report of a stepped signal delivery, no
 * signal queued), where the agent learns the handler's address; a hit that
 * finds SIGTRAP no longer caught although a handler was seen puts that
 * handler back (rt_sigaction injected, with the flags, restorer and mask the
 * reset left) and SIGTRAP back into the blocked mask; a hit with DR6.BS is
 * counted and its SIGTRAP delivered, with the si_code (TRAP_TRACE) and
 * si_addr the kernel gave it, as the program's own step trap. RUN's flag 1
 * (legacy) turns all of it off: every hit's SIGTRAP suppressed, as before.
 */

#ifndef PTRACE_GETSIGMASK
#define PTRACE_GETSIGMASK 0x420a
#endif
#ifndef PTRACE_SETSIGMASK
#define PTRACE_SETSIGMASK 0x420b
#endif
#define DR7_OFFSET offsetof(struct user, u_debugreg[7])
#define DR7_ENABLE_BITS 0xffull /* L0-L3, G0-G3 */
#define SIGTRAP_BIT (1ull << (SIGTRAP - 1))
#define RUN_LEGACY_TRAPS 1u

/* RUN's flag 1, for the call in progress. */
static bool legacy_traps;

static bool breakpoint_armed(pid_t tid)
{
	uint64_t dr7;

	return peek_user(tid, DR7_OFFSET, &dr7) == 0 && (dr7 & DR7_ENABLE_BITS);
}

/* Whether Linux takes the instruction at rip for one that sets TF itself
 * (is_setting_trap_flag: popf or iret after prefixes): stepping it would
 * hand the tracer's TF to the program. Unreadable counts as yes. */
static bool sets_trap_flag(pid_t tid, uint64_t rip)
{
	uint8_t insn[16] = { 0 };
	uint64_t w;

	if (peek_data(tid, rip, &w) < 0)
		return true;
	memcpy(insn, &w, 8);
	if (peek_data(tid, rip + 8, &w) == 0)
		memcpy(insn + 8, &w, 8);
	for (size_t i = 0; i < 15; i++) {
		uint8_t b = insn[i];

		if (b == 0x26 || b == 0x2e || b == 0x36 || b == 0x3e || b == 0x64 || b == 0x65 || b == 0x66 ||
		    b == 0x67 || b == 0xf0 || b == 0xf2 || b == 0xf3 || (b >= 0x40 && b <= 0x4f))
			continue;
		return b == 0x9d || b == 0xcf;
	}
	return true;
}

static uint64_t process_trap_handler(pid_t tgid)
{
	for (size_t i = 0; i < ntasks; i++)
		if (tasks[i].tgid == tgid && tasks[i].trap_handler)
			return tasks[i].trap_handler;
	return 0;
}

/*
 * Delivers the SIGTRAP thread `tid` is stopped with. With a breakpoint
 * armed, through PTRACE_SINGLESTEP: the thread's next stop is at its
 * handler's first instruction (si_code SIGTRAP, from ptrace_notify), whose
 * address is remembered; it is then continued, or left there with
 * `leave_stopped` (*stopped = true). Any other first stop (the signal
 * killed it, no frame could be built) is stashed for the next wait_any.
 * Returns 0, or -1 with errno.
 */
static int deliver_sigtrap(pid_t tid, bool leave_stopped, bool *stopped)
{
	struct user_regs_struct regs;
	siginfo_t si;
	int st;

	*stopped = false;
	if (legacy_traps || !breakpoint_armed(tid) || ptrace(PTRACE_GETREGS, tid, 0, &regs) < 0 ||
	    ((regs.eflags & X86_EFLAGS_TF) == 0 && sets_trap_flag(tid, regs.rip)))
		return resume(tid, PTRACE_CONT, SIGTRAP);
	if (resume(tid, PTRACE_SINGLESTEP, SIGTRAP) < 0 || wait_for(tid, &st) < 0)
		return -1;
	if (WIFSTOPPED(st) && st >> 16 == 0 && WSTOPSIG(st) == SIGTRAP && ptrace(PTRACE_GETSIGINFO, tid, 0, &si) == 0 &&
	    si.si_code == SIGTRAP && ptrace(PTRACE_GETREGS, tid, 0, &regs) == 0) {
		struct task *t = task_find(tid);

		if (t)
			t->trap_handler = regs.rip;
		if (leave_stopped) {
			*stopped = true;
			return 0;
		}
		return resume(tid, PTRACE_CONT, 0);
	}
	stash_status(tid, st);
	return 0;
}

/* SIGTRAP's bits of SigIgn and SigCgt in /proc/TID/status. */
static int sigtrap_disposition(pid_t tid, bool *ignored, bool *caught)
{
	char path[64], line[256];
	unsigned long long ign = 0, cgt = 0;
	int found = 0;
	FILE *f;

	snprintf(path, sizeof path, "/proc/%d/status", (int)tid);
	f = fopen(path, "re");
	if (!f)
		return -1;
	while (fgets(line, sizeof line, f))
		found += sscanf(line, "SigIgn: %llx", &ign) + sscanf(line, "SigCgt: %llx", &cgt);
	fclose(f);
	*ignored = ign & SIGTRAP_BIT;
	*caught = cgt & SIGTRAP_BIT;
	return found == 2 ? 0 : -1;
}

/* One system call in stopped thread `tid`, as INJECT_SYSCALL runs it (less
 * its clone handling); registers and code put back. -1 with errno. */
static int inject_quiet(pid_t tid, uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3, int64_t *result)
{
	struct user_regs_struct saved, regs;
	uint64_t base, word, patched, dr6;
	int st, phase, rc = -1, err = 0;

	if (ptrace(PTRACE_GETREGS, tid, 0, &saved) < 0 || word_window(tid, saved.rip, 2, &base, &word) < 0)
		return -1;
	patched = word;
	memcpy((uint8_t *)&patched + (saved.rip - base), "\x0f\x05", 2);
	if (poke_data(tid, base, patched) < 0)
		return -1;
	regs = saved;
	regs.rax = nr;
	regs.rdi = a0;
	regs.rsi = a1;
	regs.rdx = a2;
	regs.r10 = a3;
	regs.orig_rax = (uint64_t)-1;
	regs.eflags &= ~X86_EFLAGS_TF;
	if (ptrace(PTRACE_SETREGS, tid, 0, &regs) < 0)
		goto restore;
	for (phase = 0; phase < 2;) {
		if (ptrace(PTRACE_SYSCALL, tid, 0, 0) < 0 || wait_for(tid, &st) < 0)
			goto restore;
		if (!WIFSTOPPED(st)) {
			errno = ESRCH;
			return -1;
		}
		if (st >> 8 == SYSCALL_STOP) {
			phase++;
			continue;
		}
		if (st >> 16)
			continue;
		if (phase == 0 && WSTOPSIG(st) == SIGTRAP && peek_user(tid, DR6_OFFSET, &dr6) == 0 && (dr6 & DR_TRAP_BITS)) {
			ptrace(PTRACE_POKEUSER, tid, (void *)DR6_OFFSET, 0);
			continue;
		}
		errno = EINTR;
		goto restore;
	}
	if (ptrace(PTRACE_GETREGS, tid, 0, &regs) == 0) {
		*result = (int64_t)regs.rax;
		rc = 0;
	}
restore:
	err = errno;
	if (poke_data(tid, base, word) < 0 || ptrace(PTRACE_SETREGS, tid, 0, &saved) < 0)
		return -1;
	errno = err;
	return rc;
}

/*
 * After a hit whose SIGTRAP is not delivered: if the kernel reset the
 * program's SIGTRAP handler (forced while blocked: SIGTRAP no longer caught
 * although a handler was seen), put the handler back — read the action the
 * reset left (flags, restorer, mask), set its handler, below the red zone of
 * the thread's stack — and block SIGTRAP again. *repaired says it did.
 */
static int repair_trap_reset(struct call *c, pid_t tgid, pid_t tid, bool *repaired)
{
	uint64_t handler = process_trap_handler(tgid), mask, saved[4], act[4], at;
	struct user_regs_struct regs;
	bool ignored, caught;
	int64_t r = 0;
	size_t i;

	*repaired = false;
	if (!handler || legacy_traps || sigtrap_disposition(tid, &ignored, &caught) < 0 || ignored || caught)
		return 0;
	if (ptrace(PTRACE_GETREGS, tid, 0, &regs) < 0)
		return fail_errno(c, "PTRACE_GETREGS %d", (int)tid);
	at = (regs.rsp - 128 - sizeof act) & ~15ull;
	for (i = 0; i < 4; i++)
		if (peek_data(tid, at + 8 * i, &saved[i]) < 0)
			return fail_errno(c, "PEEKDATA %d at 0x%llx (SIGTRAP handler repair)", (int)tid, (unsigned long long)at);
	if (inject_quiet(tid, SYS_rt_sigaction, SIGTRAP, 0, at, 8, &r) < 0 || r != 0)
		return fail(c, r ? (int)-r : errno, "reading the reset SIGTRAP action of %d", (int)tid);
	for (i = 0; i < 4; i++)
		if (peek_data(tid, at + 8 * i, &act[i]) < 0)
			return fail_errno(c, "PEEKDATA %d at 0x%llx", (int)tid, (unsigned long long)at);
	act[0] = handler;
	for (i = 0; i < 4; i++)
		if (poke_data(tid, at + 8 * i, act[i]) < 0)
			return fail_errno(c, "POKEDATA %d at 0x%llx", (int)tid, (unsigned long long)at);
	if (inject_quiet(tid, SYS_rt_sigaction, SIGTRAP, at, 0, 8, &r) < 0 || r != 0)
		return fail(c, r ? (int)-r : errno, "putting back SIGTRAP handler 0x%llx of %d", (unsigned long long)handler,
			    (int)tid);
	for (i = 0; i < 4; i++)
		if (poke_data(tid, at + 8 * i, saved[i]) < 0)
			return fail_errno(c, "POKEDATA %d at 0x%llx", (int)tid, (unsigned long long)at);
	if (ptrace(PTRACE_GETSIGMASK, tid, (void *)sizeof mask, &mask) < 0)
		return fail_errno(c, "PTRACE_GETSIGMASK %d", (int)tid);
	mask |= SIGTRAP_BIT;
	if (ptrace(PTRACE_SETSIGMASK, tid, (void *)sizeof mask, &mask) < 0)
		return fail_errno(c, "PTRACE_SETSIGMASK %d", (int)tid);
	*repaired = true;
	return 0;
}

/* What RUN collects: hits and signals of every thread, and which hit reached the limit. */
struct run_log {
	struct wr hits, sigs;
	uint32_t nhits, nsigs, limit;
	pid_t limit_tid;
};

enum { EV_EXITED, EV_HIT, EV_SIGNAL, EV_STOP, EV_OTHER };

/*
 * Classifies one wait status of thread `tid` of process `tgid` and does the
 * bookkeeping every stop needs: a clone event adds the new task (it comes
 * with a first stop of its own), an exec event forgets the exec'ing thread's
 * former tid, a hardware-breakpoint hit is recorded and DR6 cleared, any
 * other signal-delivery stop is recorded and its signal put in *deliver.
 * Returns EV_EXITED (a termination), EV_HIT, EV_SIGNAL, EV_STOP
 * (PTRACE_EVENT_STOP: an interrupt, a group-stop or a new thread's first
 * stop) or EV_OTHER (any other event or a stray syscall stop), or -1 after
 * fail(). ESRCH from ptrace means the thread was killed in its stop (a group
 * exit in another thread): its termination follows, so it is no error.
 */
static int classify(struct call *c, pid_t tgid, pid_t tid, int st, struct run_log *log, int *deliver)
{
	struct user_regs_struct regs;
	unsigned long msg;
	uint64_t dr6;
	int event = st >> 16, stopsig;

	*deliver = 0;
	if (WIFEXITED(st) || WIFSIGNALED(st))
		return EV_EXITED;
	stopsig = WSTOPSIG(st);
	if (event == PTRACE_EVENT_CLONE) {
		pid_t child, group;

		if (ptrace(PTRACE_GETEVENTMSG, tid, 0, &msg) < 0)
			return errno == ESRCH ? EV_OTHER : fail_errno(c, "PTRACE_GETEVENTMSG %d", (int)tid);
		child = (pid_t)msg;
		/* A clone without CLONE_THREAD is a new process, traced too. */
		group = tgid_of(child);
		if (!task_add(child, group > 0 ? group : tgid, false))
			return fail(c, ENOMEM, "out of memory tracking thread %d", (int)child);
		return EV_OTHER;
	}
	if (event == PTRACE_EVENT_EXEC) {
		/* The exec'ing thread took the leader's tid; its own vanished
		 * without an exit report. The other threads report theirs. */
		if (ptrace(PTRACE_GETEVENTMSG, tid, 0, &msg) == 0 && (pid_t)msg != tid)
			task_remove((pid_t)msg);
		return EV_OTHER;
	}
	if (event == PTRACE_EVENT_STOP)
		return EV_STOP;
	if (event || stopsig == SYSCALL_STOP)
		return EV_OTHER;
	if (ptrace(PTRACE_GETREGS, tid, 0, &regs) < 0)
		return errno == ESRCH ? EV_OTHER : fail_errno(c, "PTRACE_GETREGS %d at signal %d", (int)tid, stopsig);
	if (stopsig == SIGTRAP) {
		if (peek_user(tid, DR6_OFFSET, &dr6) < 0)
			return errno == ESRCH ? EV_OTHER : fail_errno(c, "PEEKUSER DR6 of %d", (int)tid);
		if (dr6 & DR_TRAP_BITS) {
			wr_u64(&log->hits, regs.rip);
			wr_u64(&log->hits, regs.eflags);
			wr_u64(&log->hits, dr6);
			wr_u32(&log->hits, (uint32_t)tid);
			log->nhits++;
			if (log->limit && log->nhits == log->limit)
				log->limit_tid = tid;
			/* Stale B0-B3 would make a later SIGTRAP from int3 or
			 * kill() look like a hit. */
			if (ptrace(PTRACE_POKEUSER, tid, (void *)DR6_OFFSET, 0) < 0 && errno != ESRCH)
				return fail_errno(c, "POKEUSER DR6 of %d", (int)tid);
			if (!legacy_traps && (dr6 & DR6_BS)) {
				/* The program's own single-step ended here too: its trap. */
				*deliver = SIGTRAP;
			} else {
				bool repaired;

				if (repair_trap_reset(c, tgid, tid, &repaired) < 0)
					return -1;
			}
			return EV_HIT;
		}
	}
	wr_u32(&log->sigs, (uint32_t)stopsig);
	wr_u64(&log->sigs, regs.rip);
	wr_u32(&log->sigs, (uint32_t)tid);
	log->nsigs++;
	*deliver = stopsig;
	return EV_SIGNAL;
}

/* How long the threads of a process get to reach a stop after PTRACE_INTERRUPT. */
#define STOP_ALL_TIMEOUT_MS 10000u

/* Threads of `tgid` not yet in a collected stop, a zombie leader excepted. */
static pid_t first_running(pid_t tgid)
{
	for (size_t i = 0; i < ntasks; i++)
		if (tasks[i].tgid == tgid && !tasks[i].stopped && !(tasks[i].tid == tgid && is_zombie(tgid)))
			return tasks[i].tid;
	return 0;
}

static int interrupt(pid_t tid)
{
	return ptrace(PTRACE_INTERRUPT, tid, 0, 0) < 0 && errno != ESRCH ? -1 : 0;
}

/*
 * Brings every thread of process `tgid` into a ptrace stop, as a checkpoint
 * needs: PTRACE_INTERRUPT to each running thread, then their stops collected.
 * Whatever a thread reports first is handled as in RUN, except that it must
 * end stopped: a hit is recorded and the thread left in that SIGTRAP stop; a
 * signal is recorded and delivered, and the thread interrupted again (any
 * ptrace stop consumes a pending interrupt, and a signal left in a
 * signal-delivery stop would be in no queue a checkpoint reads); a clone
 * leaves the new thread in its first stop and its creator is interrupted
 * again; a thread that exits is reaped. *gone: the process ended meanwhile,
 * with the leader's wait status in *leader_status.
 */
static int stop_all(struct call *c, pid_t tgid, struct run_log *log, bool *gone, int *leader_status)
{
	struct timespec deadline;
	pid_t tid, late = 0;
	int st, kind, deliver;

	*gone = false;
	deadline_in(&deadline, STOP_ALL_TIMEOUT_MS);
	for (size_t i = 0; i < ntasks; i++)
		if (tasks[i].tgid == tgid && !tasks[i].stopped && interrupt(tasks[i].tid) < 0)
			return fail_errno(c, "PTRACE_INTERRUPT %d", (int)tasks[i].tid);
	/* A status stashed by deliver_sigtrap is the thread's next stop. */
	while (stashed.set || (late = first_running(tgid)) != 0) {
		int r = wait_any(tgid, &tid, &st, &deadline);

		if (r < 0)
			return fail_errno(c, "waitpid (process %d)", (int)tgid);
		if (r == 0)
			return fail(c, ETIMEDOUT, "thread %d of process %d did not stop within %u ms of PTRACE_INTERRUPT",
				    (int)late, (int)tgid, STOP_ALL_TIMEOUT_MS);
		kind = classify(c, tgid, tid, st, log, &deliver);
		if (kind < 0)
			return -1;
		if (kind == EV_EXITED) {
			if (tid == tgid) {
				*gone = true;
				*leader_status = st;
				return 0;
			}
			continue;
		}
		if (kind == EV_STOP || (kind == EV_HIT && !deliver))
			continue;
		if (deliver == SIGTRAP) {
			/* Into its handler and left there: no signal held in a stop. */
			bool stopped;
			struct task *t;

			if (deliver_sigtrap(tid, true, &stopped) < 0 && errno != ESRCH)
				return fail_errno(c, "delivering SIGTRAP to %d", (int)tid);
			t = task_find(tid);
			if (stopped || !t || t->stopped)
				continue;
			if (interrupt(tid) < 0)
				return fail_errno(c, "interrupting %d again", (int)tid);
			continue;
		}
		if ((resume(tid, PTRACE_CONT, deliver) < 0 && errno != ESRCH) || interrupt(tid) < 0)
			return fail_errno(c, "resuming and interrupting %d again", (int)tid);
	}
	return 0;
}

/* The threads of `tgid`, ascending. */
static void write_threads(struct wr *w, pid_t tgid)
{
	size_t at = wr_mark(w);
	uint32_t n = 0;
	pid_t last = 0;

	for (;;) {
		pid_t next = 0;

		for (size_t i = 0; i < ntasks; i++)
			if (tasks[i].tgid == tgid && tasks[i].tid > last && (!next || tasks[i].tid < next))
				next = tasks[i].tid;
		if (!next)
			break;
		wr_u32(w, (uint32_t)next);
		n++;
		last = next;
	}
	wr_patch_u32(w, at, n);
}

static int op_run(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	uint32_t limit = rd_u32(&c->in, "stop_after_hits");
	uint32_t timeout_ms = rd_u32(&c->in, "timeout_ms");
	/* An optional trailing field: older hosts send none. */
	uint32_t flags = rd_left(&c->in) ? rd_u32(&c->in, "flags") : 0;
	struct run_log log = { .limit = limit };
	uint32_t outcome = 0;
	int32_t code = 0;
	struct timespec deadline;
	bool gone = false;
	int leader_st = 0, rc = -1;

	if (parsed(c))
		return -1;
	if (flags & ~RUN_LEGACY_TRAPS)
		return fail(c, EINVAL, "flags: unknown bits 0x%x", flags & ~RUN_LEGACY_TRAPS);
	if (!is_tracked(pid))
		return fail(c, ESRCH, "pid: %d is not a process this agent spawned (or it was already reaped)", (int)pid);
	legacy_traps = flags & RUN_LEGACY_TRAPS;
	deadline_in(&deadline, timeout_ms);

	/* Every thread, with signal 0: whatever stop it is in (a hit's SIGTRAP
	 * included) is not delivered. A thread killed in its stop meanwhile
	 * (ESRCH) reports its end below. */
	for (size_t i = 0; i < ntasks; i++)
		if (tasks[i].tgid == pid && tasks[i].stopped && resume(tasks[i].tid, PTRACE_CONT, 0) < 0 &&
		    errno != ESRCH)
			return fail_errno(c, "PTRACE_CONT %d", (int)tasks[i].tid);

	for (;;) {
		pid_t tid;
		int st, kind, deliver, r;

		r = wait_any(pid, &tid, &st, timeout_ms ? &deadline : NULL);
		if (r < 0) {
			fail_errno(c, "waitpid (process %d)", (int)pid);
			goto out;
		}
		if (r == 0) {
			/* Stops already queued ahead of the interrupts are handled
			 * as usual: the process may genuinely exit or reach the limit. */
			if (stop_all(c, pid, &log, &gone, &leader_st) < 0)
				goto out;
			if (gone || log.limit_tid)
				break;
			fail(c, ETIMEDOUT, "timed out after %u ms; every thread of process %d interrupted and left stopped "
			     "(%u hits and %u signals seen)", timeout_ms, (int)pid, log.nhits, log.nsigs);
			goto out;
		}
		kind = classify(c, pid, tid, st, &log, &deliver);
		if (kind < 0)
			goto out;
		if (kind == EV_EXITED) {
			if (tid != pid)
				continue; /* a thread's end; the leader reports last */
			gone = true;
			leader_st = st;
			break;
		}
		if (kind == EV_HIT && log.limit_tid) {
			bool stopped;

			/* A hit that is also the program's step: its trap delivered,
			 * the thread left at its handler's first instruction. */
			if (deliver && deliver_sigtrap(tid, true, &stopped) < 0 && errno != ESRCH) {
				fail_errno(c, "delivering SIGTRAP to %d", (int)tid);
				goto out;
			}
			if (stop_all(c, pid, &log, &gone, &leader_st) < 0)
				goto out;
			break;
		}
		if (deliver == SIGTRAP) {
			bool stopped;

			if (deliver_sigtrap(tid, false, &stopped) < 0 && errno != ESRCH) {
				fail_errno(c, "delivering SIGTRAP to %d", (int)tid);
				goto out;
			}
			continue;
		}
		/* A new thread's first stop, group-stops, other events, stray
		 * syscall stops: continue; a signal is delivered. */
		if (resume(tid, PTRACE_CONT, deliver) < 0 && errno != ESRCH) {
			fail_errno(c, "PTRACE_CONT %d", (int)tid);
			goto out;
		}
	}

	if (gone) {
		outcome = WIFEXITED(leader_st) ? RUN_EXITED : RUN_KILLED;
		code = WIFEXITED(leader_st) ? WEXITSTATUS(leader_st) : WTERMSIG(leader_st);
	} else {
		outcome = RUN_HIT_LIMIT;
	}
	wr_u32(&c->out, outcome);
	wr_le(&c->out, (uint32_t)code, 4);
	wr_u32(&c->out, log.nhits);
	wr_raw(&c->out, log.hits.p, log.hits.len);
	wr_u32(&c->out, log.nsigs);
	wr_raw(&c->out, log.sigs.p, log.sigs.len);
	wr_u32(&c->out, gone ? 0u : (uint32_t)log.limit_tid);
	if (gone)
		wr_u32(&c->out, 0);
	else
		write_threads(&c->out, pid);
	c->out.oom |= log.hits.oom || log.sigs.oom;
	rc = 0;
out:
	legacy_traps = false;
	wr_free(&log.hits);
	wr_free(&log.sigs);
	return rc;
}

static int op_getregs(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	struct user_regs_struct regs;

	if (parsed(c))
		return -1;
	if (ptrace(PTRACE_GETREGS, pid, 0, &regs) < 0)
		return fail_errno(c, "PTRACE_GETREGS %d", (int)pid);
	wr_bytes(&c->out, &regs, sizeof regs);
	return 0;
}

static int op_setregs(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	uint32_t n;
	const uint8_t *data = rd_bytes(&c->in, "user_regs_struct", &n);
	struct user_regs_struct regs;

	if (parsed(c))
		return -1;
	if (n != sizeof regs)
		return fail(c, EINVAL, "user_regs_struct: %u bytes, expected %zu", n, sizeof regs);
	memcpy(&regs, data, sizeof regs);
	if (ptrace(PTRACE_SETREGS, pid, 0, &regs) < 0)
		return fail_errno(c, "PTRACE_SETREGS %d", (int)pid);
	return 0;
}

static int op_getregset(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	uint32_t note = rd_u32(&c->in, "note_type");
	uint32_t max = rd_u32(&c->in, "max_size");
	struct iovec iov;
	size_t at;

	if (parsed(c))
		return -1;
	if (max > MAX_DATA)
		return fail(c, EINVAL, "max_size: %u exceeds the frame limit", max);
	at = wr_mark(&c->out);
	iov.iov_base = wr_grow(&c->out, max);
	iov.iov_len = max;
	if (c->out.oom)
		return fail(c, ENOMEM, "max_size: cannot allocate %u bytes", max);
	if (ptrace(PTRACE_GETREGSET, pid, (void *)(unsigned long)note, &iov) < 0)
		return fail_errno(c, "PTRACE_GETREGSET %d note 0x%x", (int)pid, note);
	c->out.len = at + 4 + iov.iov_len;
	wr_patch_u32(&c->out, at, (uint32_t)iov.iov_len);
	return 0;
}

static int op_setregset(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	uint32_t note = rd_u32(&c->in, "note_type");
	uint32_t n;
	const uint8_t *data = rd_bytes(&c->in, "data", &n);
	struct iovec iov;

	if (parsed(c))
		return -1;
	iov.iov_base = (void *)data;
	iov.iov_len = n;
	if (ptrace(PTRACE_SETREGSET, pid, (void *)(unsigned long)note, &iov) < 0)
		return fail_errno(c, "PTRACE_SETREGSET %d note 0x%x (%u bytes)", (int)pid, note, n);
	return 0;
}

static int op_peekuser(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	uint64_t off = rd_u64(&c->in, "offset");
	uint64_t val;

	if (parsed(c))
		return -1;
	if (peek_user(pid, off, &val) < 0)
		return fail_errno(c, "PTRACE_PEEKUSER %d offset %llu", (int)pid, (unsigned long long)off);
	wr_u64(&c->out, val);
	return 0;
}

static int op_pokeuser(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	uint64_t off = rd_u64(&c->in, "offset");
	uint64_t val = rd_u64(&c->in, "value");

	if (parsed(c))
		return -1;
	if (ptrace(PTRACE_POKEUSER, pid, (void *)off, (void *)val) < 0)
		return fail_errno(c, "PTRACE_POKEUSER %d offset %llu = 0x%llx", (int)pid,
				  (unsigned long long)off, (unsigned long long)val);
	return 0;
}

static int op_read_file(struct call *c)
{
	char *path = rd_cstr(&c->in, "path");
	uint64_t max = rd_u64(&c->in, "max_size");
	size_t at, have = 0;
	int fd, rc = -1;

	if (parsed(c))
		goto out;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		fail_errno(c, "open %s", path);
		goto out;
	}
	/* Read to EOF rather than trusting st_size, which is 0 for /proc files;
	 * one byte beyond MAX_DATA tells a too-large file from one that fits. */
	if (max > (uint64_t)MAX_DATA + 1)
		max = (uint64_t)MAX_DATA + 1;
	at = wr_mark(&c->out);
	while (have < max) {
		uint64_t want = max - have < 65536 ? max - have : 65536;
		uint8_t *p;
		ssize_t n;

		p = wr_grow(&c->out, want);
		if (!p) {
			fail(c, ENOMEM, "%s: out of memory after %zu bytes", path, have);
			break;
		}
		n = read(fd, p, want);
		c->out.len -= want;
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			fail_errno(c, "read %s", path);
			break;
		}
		if (n == 0)
			break;
		c->out.len += (size_t)n;
		have += (size_t)n;
	}
	close(fd);
	if (!c->err && have > MAX_DATA)
		fail(c, EFBIG, "%s: more than %u bytes do not fit in a frame", path, MAX_DATA);
	if (c->err)
		goto out;
	wr_patch_u32(&c->out, at, (uint32_t)have);
	rc = 0;
out:
	free(path);
	return rc;
}

static int op_read_mem(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	uint64_t addr = rd_u64(&c->in, "address");
	uint64_t len = rd_u64(&c->in, "length");
	uint8_t *p;
	size_t done = 0;
	int fd;

	if (parsed(c))
		return -1;
	if (len > MAX_DATA)
		return fail(c, EINVAL, "length: %llu exceeds the frame limit", (unsigned long long)len);
	if (range_wraps(addr, len))
		return fail(c, EINVAL, "length: 0x%llx + %llu wraps around", (unsigned long long)addr,
			    (unsigned long long)len);
	wr_u32(&c->out, (uint32_t)len);
	p = wr_grow(&c->out, len);
	if (c->out.oom)
		return fail(c, ENOMEM, "length: cannot allocate %llu bytes", (unsigned long long)len);
	fd = open_mem(pid, O_RDONLY);
	if (fd < 0)
		return fail_errno(c, "READ_MEM %d", (int)pid);
	while (done < len) {
		ssize_t n = pread(fd, p + done, len - done, (off_t)(addr + done));

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (n == 0)
				errno = EIO;
			fail_errno(c, "read 0x%llx: only %zu of %llu bytes readable", (unsigned long long)addr,
				   done, (unsigned long long)len);
			break;
		}
		done += (size_t)n;
	}
	close(fd);
	return c->err ? -1 : 0;
}

static int op_write_mem(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	uint64_t addr = rd_u64(&c->in, "address");
	uint32_t len;
	const uint8_t *data = rd_bytes(&c->in, "data", &len);
	size_t done = 0;
	int fd;

	if (parsed(c))
		return -1;
	if (range_wraps(addr, len))
		return fail(c, EINVAL, "data: 0x%llx + %u wraps around", (unsigned long long)addr, len);
	fd = open_mem(pid, O_WRONLY);
	if (fd < 0)
		return fail_errno(c, "WRITE_MEM %d", (int)pid);
	while (done < len) {
		ssize_t n = pwrite(fd, data + done, len - done, (off_t)(addr + done));

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		done += (size_t)n;
	}
	close(fd);
	/* /proc/PID/mem refuses read-only mappings when the kernel restricts
	 * FOLL_FORCE there; POKEDATA does not. */
	if (done < len && poke_bytes(pid, addr + done, data + done, len - done) < 0)
		return fail_errno(c, "write 0x%llx (%u bytes): failed after %zu bytes", (unsigned long long)addr,
				  len, done);
	return 0;
}

/* Puts the process back as INJECT_SYSCALL found it; returns -1 with errno. */
static int inject_restore(pid_t pid, uint64_t base, uint64_t word, struct user_regs_struct *saved)
{
	if (poke_data(pid, base, word) < 0)
		return -1;
	return ptrace(PTRACE_SETREGS, pid, 0, saved) < 0 ? -1 : 0;
}

static int op_inject_syscall(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	uint64_t nr = rd_u64(&c->in, "nr");
	uint64_t args[6];
	struct user_regs_struct saved, regs;
	uint64_t base, word, patched, dr6;
	unsigned long msg;
	pid_t born = 0;
	int st, phase, resume_sig = 0;
	/* Signals that arrived before the call ran, put back in the queue (see below). */
	uint64_t requeued = 0, mask_before = 0;
	bool mask_changed = false;

	for (int i = 0; i < 6; i++) {
		char name[24];

		snprintf(name, sizeof name, "args[%d]", i);
		args[i] = rd_u64(&c->in, name);
	}
	if (parsed(c))
		return -1;
	if (ptrace(PTRACE_GETREGS, pid, 0, &saved) < 0)
		return fail_errno(c, "PTRACE_GETREGS %d", (int)pid);
	if (word_window(pid, saved.rip, 2, &base, &word) < 0)
		return fail_errno(c, "PEEKDATA %d at rip 0x%llx", (int)pid, (unsigned long long)saved.rip);
	patched = word;
	memcpy((uint8_t *)&patched + (saved.rip - base), "\x0f\x05", 2); /* syscall */
	if (poke_data(pid, base, patched) < 0)
		return fail_errno(c, "POKEDATA %d at 0x%llx", (int)pid, (unsigned long long)base);

	regs = saved;
	regs.rax = nr;
	regs.rdi = args[0];
	regs.rsi = args[1];
	regs.rdx = args[2];
	regs.r10 = args[3];
	regs.r8 = args[4];
	regs.r9 = args[5];
	/* No syscall restart logic may rewind rip on the way out of this stop. */
	regs.orig_rax = (uint64_t)-1;
	regs.eflags &= ~X86_EFLAGS_TF;
	if (ptrace(PTRACE_SETREGS, pid, 0, &regs) < 0) {
		fail_errno(c, "PTRACE_SETREGS %d", (int)pid);
		goto restore;
	}

	/* phase 0: waiting for syscall-enter, 1: for syscall-exit. */
	for (phase = 0; phase < 2;) {
		if (ptrace(PTRACE_SYSCALL, pid, 0, (void *)(long)resume_sig) < 0) {
			fail_errno(c, "PTRACE_SYSCALL %d", (int)pid);
			goto restore;
		}
		resume_sig = 0;
		if (wait_for(pid, &st) < 0) {
			fail_errno(c, "waitpid %d", (int)pid);
			goto restore;
		}
		if (WIFEXITED(st) || WIFSIGNALED(st))
			return fail(c, ESRCH, "process %d ended during the injected syscall %llu (wait status 0x%x)",
				    (int)pid, (unsigned long long)nr, st);
		if (st >> 8 == SYSCALL_STOP) {
			/* The call runs under the mask it was given, not the one
			 * that held a requeued signal back. */
			if (phase == 0 && mask_changed) {
				if (ptrace(PTRACE_SETSIGMASK, pid, (void *)sizeof mask_before, &mask_before) < 0) {
					fail_errno(c, "PTRACE_SETSIGMASK %d (putting the mask back)", (int)pid);
					goto restore;
				}
				mask_changed = false;
			}
			phase++;
			continue;
		}
		if ((st >> 16 == PTRACE_EVENT_CLONE || st >> 16 == PTRACE_EVENT_FORK || st >> 16 == PTRACE_EVENT_VFORK) &&
		    ptrace(PTRACE_GETEVENTMSG, pid, 0, &msg) == 0) {
			/* The injected call made a thread (or process): traced
			 * already (TRACECLONE, or TRACEFORK that TRACE_FORKS turned
			 * on for a restored tree); its first stop is collected below. */
			pid_t group = tgid_of((pid_t)msg);

			born = (pid_t)msg;
			if (!task_add(born, group > 0 ? group : tgid_of(pid), false)) {
				fail(c, ENOMEM, "out of memory tracking thread %d", (int)born);
				goto restore;
			}
			continue;
		}
		if (st >> 16)
			continue; /* an event stop, e.g. a leftover PTRACE_INTERRUPT */
		if (phase == 0 && WSTOPSIG(st) == SIGTRAP && peek_user(pid, DR6_OFFSET, &dr6) == 0 &&
		    (dr6 & DR_TRAP_BITS)) {
			/* Our syscall instruction sits on an execute breakpoint and RF
			 * was clear: an artefact of the injection, not a hit. The
			 * saved registers still carry the original RF. */
			ptrace(PTRACE_POKEUSER, pid, (void *)DR6_OFFSET, 0);
			continue;
		}
		/*
		 * A signal (a periodic timer, say) was dequeued on the way to
		 * the injected instruction: it belongs to the process, not to
		 * the call. Blocked now and handed back on resume, the kernel
		 * queues it again with its siginfo and on its own queue
		 * (ptrace_signal: "if the (new) signal is now blocked, requeue
		 * it"), so a checkpoint finds it pending; then the call is
		 * tried again. SIGSTOP cannot be blocked, and a signal that
		 * comes back at once is raised by the attempt itself (a fault):
		 * those still fail.
		 */
		if (phase == 0 && WSTOPSIG(st) != SIGSTOP && WSTOPSIG(st) != SIGKILL &&
		    !(requeued & (1ull << (WSTOPSIG(st) - 1)))) {
			uint64_t mask;

			if (ptrace(PTRACE_GETSIGMASK, pid, (void *)sizeof mask, &mask) < 0) {
				fail_errno(c, "PTRACE_GETSIGMASK %d", (int)pid);
				goto restore;
			}
			if (!mask_changed)
				mask_before = mask;
			mask |= 1ull << (WSTOPSIG(st) - 1);
			if (ptrace(PTRACE_SETSIGMASK, pid, (void *)sizeof mask, &mask) < 0) {
				fail_errno(c, "PTRACE_SETSIGMASK %d", (int)pid);
				goto restore;
			}
			mask_changed = true;
			requeued |= 1ull << (WSTOPSIG(st) - 1);
			resume_sig = WSTOPSIG(st);
			continue;
		}
		fail(c, EINTR, "signal %d stopped process %d before the injected syscall ran; "
			 "registers and memory restored, process left in that signal-delivery stop",
			 WSTOPSIG(st), (int)pid);
		goto restore;
	}

	if (ptrace(PTRACE_GETREGS, pid, 0, &regs) < 0) {
		fail_errno(c, "PTRACE_GETREGS %d after the syscall", (int)pid);
		goto restore;
	}
	wr_u64(&c->out, regs.rax);

restore:
	if (mask_changed && ptrace(PTRACE_SETSIGMASK, pid, (void *)sizeof mask_before, &mask_before) < 0 && !c->err)
		fail_errno(c, "PTRACE_SETSIGMASK %d (putting the mask back)", (int)pid);
	/* Left in its first stop (PTRACE_EVENT_STOP), before any instruction of
	 * its own: the next request may address it. */
	if (born && wait_for(born, &st) < 0 && !c->err)
		fail_errno(c, "waitpid for the first stop of new thread %d", (int)born);
	if (inject_restore(pid, base, word, &saved) < 0) {
		int err = errno;
		char earlier[sizeof c->msg];

		snprintf(earlier, sizeof earlier, "%s", c->err ? c->msg : "");
		wr_free(&c->out);
		return fail(c, err, "restoring process %d after the injected syscall failed: %s "
			    "(the process is corrupt)%s%s", (int)pid, strerror(err), earlier[0] ? "; earlier: " : "",
			    earlier);
	}
	return c->err ? -1 : 0;
}

static int op_kill(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	int st;

	if (parsed(c))
		return -1;
	/* Only our own children: waiting on anything else cannot work, and the
	 * host has no business killing other guest processes. */
	if (!is_tracked(pid))
		return fail(c, ESRCH, "pid: %d is not a process this agent spawned (or it was already reaped)",
			    (int)pid);
	if (kill_and_reap(pid, &st) < 0)
		return fail_errno(c, "waitpid %d", (int)pid);
	wr_le(&c->out, (uint32_t)st, 4);
	return 0;
}

/* ------------------------------------------------------------------------ */
/* Handing a process to another checkpointer (CRIU) and taking it back.
 *
 * DETACH leaves a stopped process in a job-control stop with no tracer, as
 * `criu dump` needs it; the process is still the agent's child, so once the
 * dump kills it REAP collects it (its pid must be free for `criu restore`).
 * ATTACH seizes a process the agent did not spawn (the restored one) and
 * brings every thread into a ptrace stop, after which every op works on it
 * as on a spawned one. */

/* Children detached and not yet reaped: killed when the agent exits. */
static pid_t detached[64];
static size_t ndetached;

static void forget_detached(pid_t pid)
{
	for (size_t i = 0; i < ndetached; i++)
		if (detached[i] == pid) {
			detached[i] = detached[--ndetached];
			return;
		}
}

static void kill_detached(void)
{
	while (ndetached) {
		pid_t pid = detached[--ndetached];
		int st;

		kill(pid, SIGKILL);
		while (waitpid(pid, &st, __WALL) < 0 && errno == EINTR)
			;
	}
}

/* The state letter of /proc/PID/task/TID/stat ('?' when unreadable). */
static char task_state(pid_t pid, pid_t tid)
{
	char path[96], buf[512], *p;
	ssize_t n;
	int fd;

	snprintf(path, sizeof path, "/proc/%d/task/%d/stat", (int)pid, (int)tid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return '?';
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return '?';
	buf[n] = 0;
	p = strrchr(buf, ')');
	return p && p[1] == ' ' ? p[2] : '?';
}

#define DETACH_STOP_TIMEOUT_MS 5000u

static int op_detach(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	struct timespec deadline, now;

	if (parsed(c))
		return -1;
	if (!is_tracked(pid))
		return fail(c, ESRCH, "pid: %d is not a process this agent spawned (or it was already reaped)", (int)pid);
	for (size_t i = 0; i < ntasks; i++)
		if (tasks[i].tgid == pid && !tasks[i].stopped)
			return fail(c, EBUSY, "thread %d of process %d is not in a ptrace stop", (int)tasks[i].tid, (int)pid);
	if (ndetached == sizeof detached / sizeof detached[0])
		return fail(c, ENOSPC, "%zu detached processes are not reaped yet", ndetached);
	/* SIGSTOP queued process-wide while every thread is still in a ptrace
	 * stop: whichever thread leaves its stop first takes it on its way back
	 * to user mode and stops the whole group before any user instruction.
	 * Each thread detaches with no signal of its own: a SIGTRAP of a hit
	 * held in a signal-delivery stop is discarded, as RUN would. Debug
	 * registers a tracer set stay with the thread (x86 clears them at exec
	 * and exit, not at detach): the next checkpointer sees them as the
	 * process's own state. */
	if (kill(pid, SIGSTOP) < 0)
		return fail_errno(c, "kill %d SIGSTOP", (int)pid);
	for (size_t i = 0; i < ntasks; i++)
		if (tasks[i].tgid == pid && ptrace(PTRACE_DETACH, tasks[i].tid, 0, 0) < 0 && errno != ESRCH)
			return fail_errno(c, "PTRACE_DETACH %d", (int)tasks[i].tid);
	forget_process(pid);
	detached[ndetached++] = pid;
	/* Answer only once the kernel shows every thread stopped (state T). */
	deadline_in(&deadline, DETACH_STOP_TIMEOUT_MS);
	for (;;) {
		char path[64];
		struct dirent *e;
		bool all = true;
		DIR *d;

		snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
		d = opendir(path);
		if (!d)
			return fail_errno(c, "opendir %s", path);
		while ((e = readdir(d)) != NULL)
			if (e->d_name[0] != '.' && task_state(pid, (pid_t)atoi(e->d_name)) != 'T')
				all = false;
		closedir(d);
		if (all)
			return 0;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec > deadline.tv_sec || (now.tv_sec == deadline.tv_sec && now.tv_nsec > deadline.tv_nsec))
			return fail(c, ETIMEDOUT, "process %d not in a job-control stop within %u ms of its detach", (int)pid,
				    DETACH_STOP_TIMEOUT_MS);
		usleep(1000);
	}
}

static int op_reap(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	uint32_t timeout_ms = rd_u32(&c->in, "timeout_ms");
	struct timespec deadline, now;
	bool known = false;
	int st;

	if (parsed(c))
		return -1;
	for (size_t i = 0; i < ndetached; i++)
		known = known || detached[i] == pid;
	if (!known)
		return fail(c, ESRCH, "pid: %d is not a process this agent detached (or it was already reaped)", (int)pid);
	deadline_in(&deadline, timeout_ms);
	for (;;) {
		pid_t r = waitpid(pid, &st, __WALL | WNOHANG);

		if (r < 0 && errno != EINTR)
			return fail_errno(c, "waitpid %d", (int)pid);
		if (r == pid && (WIFEXITED(st) || WIFSIGNALED(st)))
			break;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (timeout_ms && (now.tv_sec > deadline.tv_sec ||
				   (now.tv_sec == deadline.tv_sec && now.tv_nsec > deadline.tv_nsec)))
			return fail(c, ETIMEDOUT, "process %d did not end within %u ms", (int)pid, timeout_ms);
		usleep(1000);
	}
	forget_detached(pid);
	wr_u32(&c->out, (uint32_t)st);
	return 0;
}

/* Seizes one thread and collects its first stop. */
static int seize_thread(struct call *c, pid_t pid, pid_t tid)
{
	int st;

	if (ptrace(PTRACE_SEIZE, tid, 0,
		   (void *)(long)(PTRACE_O_EXITKILL | PTRACE_O_TRACEEXEC | PTRACE_O_TRACESYSGOOD |
				  PTRACE_O_TRACECLONE)) < 0)
		return fail_errno(c, "PTRACE_SEIZE %d", (int)tid);
	if (!task_add(tid, pid, false))
		return fail(c, ENOMEM, "task table");
	if (ptrace(PTRACE_INTERRUPT, tid, 0, 0) < 0)
		return fail_errno(c, "PTRACE_INTERRUPT %d", (int)tid);
	/* A job-control-stopped thread reports PTRACE_EVENT_STOP for the
	 * interrupt (its group-stop); a running one the same, with SIGTRAP. A
	 * signal arriving first is left pending: re-interrupt after passing it on. */
	for (;;) {
		if (wait_for(tid, &st) < 0)
			return fail_errno(c, "waitpid %d", (int)tid);
		if (WIFEXITED(st) || WIFSIGNALED(st))
			return fail(c, ESRCH, "thread %d ended while being attached", (int)tid);
		if (st >> 16 == PTRACE_EVENT_STOP)
			return 0;
		if (resume(tid, PTRACE_CONT, st >> 16 == 0 ? WSTOPSIG(st) : 0) < 0 || interrupt(tid) < 0)
			return fail_errno(c, "resuming and interrupting %d", (int)tid);
	}
}

static int op_attach(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	bool grew = true;

	if (parsed(c))
		return -1;
	if (pid == getpid())
		return fail(c, EINVAL, "pid: %d is the agent itself", (int)pid);
	if (is_tracked(pid))
		return fail(c, EEXIST, "pid: %d is already traced by this agent", (int)pid);
	if (tgid_of(pid) != pid)
		return fail(c, ESRCH, "pid: %d is no process (not a thread-group leader, or gone)", (int)pid);
	/* Until a listing of /proc/PID/task shows no thread not yet seized: a
	 * thread created meanwhile by one not yet stopped is caught next round;
	 * once all are seized, TRACECLONE covers the rest. */
	while (grew) {
		char path[64];
		struct dirent *e;
		DIR *d;

		grew = false;
		snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
		d = opendir(path);
		if (!d) {
			fail_errno(c, "opendir %s", path);
			goto undo;
		}
		while ((e = readdir(d)) != NULL) {
			pid_t tid = (pid_t)atoi(e->d_name);

			if (tid <= 0 || task_find(tid))
				continue;
			if (seize_thread(c, pid, tid) < 0) {
				closedir(d);
				goto undo;
			}
			grew = true;
		}
		closedir(d);
	}
	write_threads(&c->out, pid);
	return 0;
undo:
	/* Nothing half-attached: detach what was seized, leaving it stopped. */
	kill(pid, SIGSTOP);
	for (size_t i = 0; i < ntasks; i++)
		if (tasks[i].tgid == pid)
			ptrace(PTRACE_DETACH, tasks[i].tid, 0, 0);
	forget_process(pid);
	return -1;
}

/* ------------------------------------------------------------------------ */
/* Process trees (a restore creates each child by an injected clone3 in its
 * parent, and lets the tree run).
 *
 * TRACE_FORKS turns PTRACE_O_TRACEFORK and TRACEVFORK on or off for every
 * thread of a tracked process: with them on, a child that an injected clone3
 * with exit signal SIGCHLD creates is traced from its first instruction
 * (INJECT_SYSCALL records it and collects its first stop). The child
 * inherits the options in force; the host turns them off again.
 *
 * RELEASE detaches every thread of a tracked process (PTRACE_DETACH, no
 * signal: a hit's SIGTRAP held in a stop is discarded) and forgets it: the
 * process runs on untraced, a child of its own parent. */

#define TRACE_OPTIONS (PTRACE_O_EXITKILL | PTRACE_O_TRACEEXEC | PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACECLONE)

static int op_trace_forks(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	uint32_t on = rd_u32(&c->in, "on");
	long options = TRACE_OPTIONS | (on ? PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK : 0);

	if (parsed(c))
		return -1;
	if (on > 1)
		return fail(c, EINVAL, "on: %u is neither 0 nor 1", on);
	if (!is_tracked(pid) || tgid_of(pid) != pid)
		return fail(c, ESRCH, "pid: %d is not a process this agent traces", (int)pid);
	for (size_t i = 0; i < ntasks; i++)
		if (tasks[i].tgid == pid && ptrace(PTRACE_SETOPTIONS, tasks[i].tid, 0, (void *)options) < 0)
			return fail_errno(c, "PTRACE_SETOPTIONS %d", (int)tasks[i].tid);
	return 0;
}

static int op_release(struct call *c)
{
	pid_t pid = rd_pid(&c->in);

	if (parsed(c))
		return -1;
	if (!is_tracked(pid) || tgid_of(pid) != pid)
		return fail(c, ESRCH, "pid: %d is not a process this agent traces", (int)pid);
	for (size_t i = 0; i < ntasks; i++)
		if (tasks[i].tgid == pid && !tasks[i].stopped)
			return fail(c, EBUSY, "thread %d of pid %d is not in a collected stop", (int)tasks[i].tid, (int)pid);
	for (size_t i = 0; i < ntasks; i++)
		if (tasks[i].tgid == pid && ptrace(PTRACE_DETACH, tasks[i].tid, 0, 0) < 0 && errno != ESRCH)
			return fail_errno(c, "PTRACE_DETACH %d", (int)tasks[i].tid);
	forget_process(pid);
	return 0;
}

#ifndef PTRACE_GET_RSEQ_CONFIGURATION
#define PTRACE_GET_RSEQ_CONFIGURATION 0x420f
#endif

/* Linux 5.13+: struct ptrace_rseq_configuration (24 bytes). */
struct rseq_configuration {
	uint64_t rseq_abi_pointer;
	uint32_t rseq_abi_size;
	uint32_t signature;
	uint32_t flags;
	uint32_t pad;
};

static int op_rseq_config(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	struct rseq_configuration conf;
	long n;

	if (parsed(c))
		return -1;
	memset(&conf, 0, sizeof conf);
	n = ptrace(PTRACE_GET_RSEQ_CONFIGURATION, pid, (void *)sizeof conf, &conf);
	if (n < 0)
		return fail_errno(c, "PTRACE_GET_RSEQ_CONFIGURATION %d", (int)pid);
	if ((size_t)n < offsetof(struct rseq_configuration, pad))
		return fail(c, EPROTO, "PTRACE_GET_RSEQ_CONFIGURATION %d: %ld bytes, expected at least %zu", (int)pid,
			    n, offsetof(struct rseq_configuration, pad));
	wr_u64(&c->out, conf.rseq_abi_pointer);
	wr_u32(&c->out, conf.rseq_abi_size);
	wr_u32(&c->out, conf.signature);
	wr_u32(&c->out, conf.flags);
	return 0;
}

static int op_signal(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	uint32_t sig = rd_u32(&c->in, "signo");

	if (parsed(c))
		return -1;
	if (sig == 0 || sig >= NSIG)
		return fail(c, EINVAL, "signo: %u is not a signal number", sig);
	/* As KILL: only our own children, never some other guest process. */
	if (!is_tracked(pid))
		return fail(c, ESRCH, "pid: %d is not a process this agent spawned (or it was already reaped)",
			    (int)pid);
	if (kill(pid, (int)sig) < 0)
		return fail_errno(c, "kill %d signal %u", (int)pid, sig);
	return 0;
}

#ifndef PTRACE_PEEKSIGINFO
#define PTRACE_PEEKSIGINFO 0x4209
#endif
#ifndef PTRACE_PEEKSIGINFO_SHARED
#define PTRACE_PEEKSIGINFO_SHARED 1
#endif
#define SIGINFO_BYTES 128u
/* A queue longer than this is refused rather than truncated (RLIMIT_SIGPENDING is usually far lower). */
#define MAX_QUEUED 4096u

struct peeksiginfo_args {
	uint64_t off;
	uint32_t flags;
	int32_t nr;
};

/* The task's pending signal queue (per-thread, or with flag 1 the process's
 * shared one), in delivery order, as raw 128-byte siginfo records. */
static int op_peeksiginfo(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	uint32_t flags = rd_u32(&c->in, "flags");
	uint8_t buf[32 * SIGINFO_BYTES];
	struct peeksiginfo_args args;
	size_t at;
	uint32_t count = 0;
	long n;

	if (parsed(c))
		return -1;
	if (flags & ~(uint32_t)PTRACE_PEEKSIGINFO_SHARED)
		return fail(c, EINVAL, "flags: 0x%x (only 1 = shared queue)", flags);
	at = wr_mark(&c->out);
	for (;;) {
		args.off = count;
		args.flags = flags;
		args.nr = 32;
		n = ptrace(PTRACE_PEEKSIGINFO, pid, &args, buf);
		if (n < 0)
			return fail_errno(c, "PTRACE_PEEKSIGINFO %d off %u", (int)pid, count);
		if (n == 0)
			break;
		for (long i = 0; i < n; i++)
			wr_bytes(&c->out, buf + (size_t)i * SIGINFO_BYTES, SIGINFO_BYTES);
		count += (uint32_t)n;
		if (count > MAX_QUEUED)
			return fail(c, E2BIG, "pid %d has more than %u queued signals", (int)pid, MAX_QUEUED);
	}
	if (c->out.oom)
		return fail(c, ENOMEM, "siginfo queue: out of memory");
	wr_patch_u32(&c->out, at, count);
	return 0;
}

#ifndef PTRACE_GETSIGMASK
#define PTRACE_GETSIGMASK 0x420a
#define PTRACE_SETSIGMASK 0x420b
#endif

/* The blocked mask, as the kernel's 64-bit sigset (bit n-1 = signal n). */
static int op_getsigmask(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	uint64_t mask;

	if (parsed(c))
		return -1;
	if (ptrace(PTRACE_GETSIGMASK, pid, (void *)sizeof mask, &mask) < 0)
		return fail_errno(c, "PTRACE_GETSIGMASK %d", (int)pid);
	wr_u64(&c->out, mask);
	return 0;
}

/* Sets the blocked mask without running the task (no injected call, no
 * return to user mode: nothing pending can be delivered on the way). */
static int op_setsigmask(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	uint64_t mask = rd_u64(&c->in, "mask");

	if (parsed(c))
		return -1;
	if (ptrace(PTRACE_SETSIGMASK, pid, (void *)sizeof mask, &mask) < 0)
		return fail_errno(c, "PTRACE_SETSIGMASK %d 0x%llx", (int)pid, (unsigned long long)mask);
	return 0;
}

/* A symbolic link's target: how /proc/PID/fd/N names an open file. */
static int op_readlink(struct call *c)
{
	char *path = rd_cstr(&c->in, "path");
	char target[PATH_MAX + 1];
	ssize_t n;
	int rc = -1;

	if (parsed(c))
		goto out;
	n = readlink(path, target, sizeof target);
	if (n < 0) {
		fail_errno(c, "readlink %s", path);
		goto out;
	}
	if ((size_t)n >= sizeof target) {
		fail(c, ENAMETOOLONG, "readlink %s: target longer than %d bytes", path, PATH_MAX);
		goto out;
	}
	wr_bytes(&c->out, target, (size_t)n);
	rc = 0;
out:
	free(path);
	return rc;
}

/* The names in a directory (without . and ..), in the order readdir gives. */
static int op_listdir(struct call *c)
{
	char *path = rd_cstr(&c->in, "path");
	struct dirent *e;
	uint32_t count = 0;
	size_t at;
	DIR *d = NULL;
	int rc = -1;

	if (parsed(c))
		goto out;
	d = opendir(path);
	if (!d) {
		fail_errno(c, "opendir %s", path);
		goto out;
	}
	at = wr_mark(&c->out);
	errno = 0;
	while ((e = readdir(d)) != NULL) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (++count > 65536) {
			fail(c, E2BIG, "%s: more than 65536 entries", path);
			goto out;
		}
		wr_str(&c->out, e->d_name);
	}
	if (errno) {
		fail_errno(c, "readdir %s", path);
		goto out;
	}
	if (c->out.oom) {
		fail(c, ENOMEM, "%s: out of memory", path);
		goto out;
	}
	wr_patch_u32(&c->out, at, count);
	rc = 0;
out:
	if (d)
		closedir(d);
	free(path);
	return rc;
}

/* More steps than this in one request is refused: a sequence that long is a RUN. */
#define MAX_STEPS 65536u

/*
 * After STEP's deadline: the stepped thread is interrupted and its stop
 * collected, so it is left stopped as every thread between requests is. A
 * signal it stops with first is delivered and the thread interrupted again
 * (as when stopping every thread for RUN); a step's SIGTRAP, or the
 * interrupt's own stop, leaves it there. Returns -1 with errno.
 */
static int step_interrupt(pid_t tgid, pid_t tid)
{
	struct timespec deadline;
	pid_t who;
	int st, r;

	deadline_in(&deadline, STOP_ALL_TIMEOUT_MS);
	if (interrupt(tid) < 0)
		return -1;
	for (;;) {
		r = wait_any(tgid, &who, &st, &deadline);
		if (r < 0)
			return -1;
		if (r == 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		if (who != tid)
			continue;
		if (WIFEXITED(st) || WIFSIGNALED(st))
			return 0;
		if (st >> 16 == 0 && WSTOPSIG(st) != SIGTRAP && WSTOPSIG(st) != SYSCALL_STOP) {
			if (resume(tid, PTRACE_CONT, WSTOPSIG(st)) < 0 || interrupt(tid) < 0)
				return -1;
			continue;
		}
		return 0;
	}
}

/*
 * PTRACE_SINGLESTEP of one stopped thread, `count` times, each stop
 * collected before the next step; the other threads stay stopped. Every
 * SIGTRAP stop of the thread is one step and is recorded (rip, eflags as
 * GETREGS reads them, DR6 before it is cleared) and not delivered; event
 * stops (a clone, an exec, an interrupt or group-stop) are stepped on
 * without counting. It ends after `count` steps, at the first other
 * signal (the thread left in that signal-delivery stop, the signal not
 * delivered: the host may pass it as `signo` of the next STEP), or when
 * the thread ends. A thread the program creates meanwhile is left in its
 * first stop.
 */
static int op_step(struct call *c)
{
	pid_t tid = rd_pid(&c->in);
	uint32_t count = rd_u32(&c->in, "count");
	uint32_t sig = rd_u32(&c->in, "signo");
	uint32_t timeout_ms = rd_u32(&c->in, "timeout_ms");
	struct wr steps = { 0 };
	uint32_t nsteps = 0, outcome = 0;
	int32_t code = 0;
	uint64_t where = 0;
	struct timespec deadline;
	struct task *t;
	pid_t tgid, late;
	int rc = -1;

	if (parsed(c))
		return -1;
	if (count == 0 || count > MAX_STEPS)
		return fail(c, EINVAL, "count: %u (1 to %u steps)", count, MAX_STEPS);
	if (sig >= NSIG)
		return fail(c, EINVAL, "signo: %u is not a signal number", sig);
	t = task_find(tid);
	/* Only a thread in a stop this agent collected: waiting for anything
	 * else could block for ever, or reap someone else's child. */
	if (!t || !t->stopped)
		return fail(c, ESRCH, "pid: %d is not a stopped thread of a process this agent spawned", (int)tid);
	tgid = t->tgid;
	deadline_in(&deadline, timeout_ms);

	while (!outcome) {
		struct user_regs_struct regs;
		unsigned long msg;
		uint64_t dr6;
		pid_t who;
		int st, r, event;

		if (resume(tid, PTRACE_SINGLESTEP, (int)sig) < 0) {
			fail_errno(c, "PTRACE_SINGLESTEP %d (after %u of %u steps)", (int)tid, nsteps, count);
			goto out;
		}
		sig = 0;
		for (;;) {
			r = wait_any(tgid, &who, &st, timeout_ms ? &deadline : NULL);
			if (r < 0) {
				fail_errno(c, "waitpid (thread %d, after %u of %u steps)", (int)tid, nsteps, count);
				goto out;
			}
			if (r == 0) {
				int err = step_interrupt(tgid, tid) < 0 ? errno : 0;

				fail(c, ETIMEDOUT, "timed out after %u ms in step %u of %u of thread %d; %s", timeout_ms,
				     nsteps + 1, count, (int)tid,
				     err ? strerror(err) : "the thread was interrupted and left stopped");
				goto out;
			}
			/* A non-leader thread that execs takes the leader's tid; its
			 * exec event is reported under that tid. */
			if (who != tid && st >> 8 == EXEC_STOP && ptrace(PTRACE_GETEVENTMSG, who, 0, &msg) == 0 &&
			    (pid_t)msg == tid) {
				task_remove(tid);
				tid = who;
			}
			if (who == tid)
				break;
			/* Another thread: one that ended (reaped), or a new thread's
			 * first stop (it stays in it). */
		}
		if (WIFEXITED(st) || WIFSIGNALED(st)) {
			outcome = WIFEXITED(st) ? STEP_EXITED : STEP_KILLED;
			code = WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st);
			break;
		}
		event = st >> 16;
		if (event == PTRACE_EVENT_CLONE) {
			pid_t child, group;

			if (ptrace(PTRACE_GETEVENTMSG, tid, 0, &msg) < 0) {
				fail_errno(c, "PTRACE_GETEVENTMSG %d", (int)tid);
				goto out;
			}
			child = (pid_t)msg;
			group = tgid_of(child);
			if (!task_add(child, group > 0 ? group : tgid, false)) {
				fail(c, ENOMEM, "out of memory tracking thread %d", (int)child);
				goto out;
			}
			continue;
		}
		if (event == PTRACE_EVENT_EXEC) {
			if (ptrace(PTRACE_GETEVENTMSG, tid, 0, &msg) == 0 && (pid_t)msg != tid)
				task_remove((pid_t)msg);
			continue;
		}
		if (event || WSTOPSIG(st) == SYSCALL_STOP)
			continue;
		if (ptrace(PTRACE_GETREGS, tid, 0, &regs) < 0) {
			fail_errno(c, "PTRACE_GETREGS %d after step %u", (int)tid, nsteps + 1);
			goto out;
		}
		where = regs.rip;
		if (WSTOPSIG(st) != SIGTRAP) {
			outcome = STEP_SIGNAL;
			code = WSTOPSIG(st);
			break;
		}
		if (peek_user(tid, DR6_OFFSET, &dr6) < 0) {
			fail_errno(c, "PEEKUSER DR6 of %d after step %u", (int)tid, nsteps + 1);
			goto out;
		}
		/* As after a RUN hit: stale bits would make a later SIGTRAP that
		 * is no debug exception (int3, kill) look like one. */
		if (dr6 && ptrace(PTRACE_POKEUSER, tid, (void *)DR6_OFFSET, 0) < 0) {
			fail_errno(c, "POKEUSER DR6 of %d", (int)tid);
			goto out;
		}
		wr_u64(&steps, regs.rip);
		wr_u64(&steps, regs.eflags);
		wr_u64(&steps, dr6);
		if (++nsteps == count)
			outcome = STEP_DONE;
	}

	/* Threads created meanwhile: collected in their first stop, so the next
	 * request may address them. */
	while ((late = first_running(tgid)) != 0 && late != tid) {
		int st;

		if (wait_for(late, &st) < 0) {
			fail_errno(c, "waitpid for the first stop of new thread %d", (int)late);
			goto out;
		}
	}
	wr_u32(&c->out, outcome);
	wr_le(&c->out, (uint32_t)code, 4);
	wr_u32(&c->out, nsteps);
	wr_raw(&c->out, steps.p, steps.len);
	wr_u64(&c->out, outcome == STEP_DONE || outcome == STEP_SIGNAL ? where : 0);
	c->out.oom |= steps.oom;
	rc = 0;
out:
	wr_free(&steps);
	return rc;
}

static uint16_t execute(uint16_t op, struct call *c, bool nested);

static int op_batch(struct call *c)
{
	uint32_t n = rd_count(&c->in, "sub_requests", 4);
	struct sub {
		const uint8_t *p;
		uint32_t len;
	} *subs = NULL;
	uint32_t completed = 0, executed = 0;
	size_t at_completed, at_count;
	char name[48];

	if (!c->in.err[0] && n) {
		subs = calloc(n, sizeof *subs);
		if (!subs)
			return fail(c, ENOMEM, "sub_requests: cannot allocate %u entries", n);
	}
	/* The whole structure is checked before anything runs, so a malformed
	 * BATCH has no side effects. */
	for (uint32_t i = 0; i < n && !c->in.err[0]; i++) {
		snprintf(name, sizeof name, "sub_requests[%u]", i);
		subs[i].p = rd_bytes(&c->in, name, &subs[i].len);
	}
	if (parsed(c)) {
		free(subs);
		return -1;
	}

	at_completed = wr_mark(&c->out);
	at_count = wr_mark(&c->out);
	for (uint32_t i = 0; i < n; i++) {
		struct call sub = { .in = { .p = subs[i].p, .len = subs[i].len } };
		uint16_t op, status;
		size_t at;

		snprintf(name, sizeof name, "sub_requests[%u].op", i);
		op = rd_u16(&sub.in, name);
		if (sub.in.err[0]) {
			fail(&sub, EINVAL, "%s", sub.in.err);
			status = finish(&sub);
		} else {
			status = execute(op, &sub, true);
		}
		at = wr_mark(&c->out);
		wr_u16(&c->out, status);
		wr_raw(&c->out, sub.out.p, sub.out.len);
		wr_patch_u32(&c->out, at, (uint32_t)(c->out.len - at - 4));
		wr_free(&sub.out);
		executed++;
		if (status)
			break;
		completed++;
	}
	/* Sub-requests not run still own their bulk frames: consume them. */
	for (uint32_t i = executed; i < n; i++)
		if (subs[i].len >= 2 && (subs[i].p[0] | subs[i].p[1] << 8) == OP_WRITE_MEM_BULK)
			bulk_skip_frame();
	wr_patch_u32(&c->out, at_completed, completed);
	wr_patch_u32(&c->out, at_count, executed);
	free(subs);
	return 0;
}

typedef int (*op_fn)(struct call *);

static const op_fn ops[OP_COUNT] = {
	[OP_HELLO] = op_hello,
	[OP_SPAWN] = op_spawn,
	[OP_RUN] = op_run,
	[OP_GETREGS] = op_getregs,
	[OP_SETREGS] = op_setregs,
	[OP_GETREGSET] = op_getregset,
	[OP_SETREGSET] = op_setregset,
	[OP_PEEKUSER] = op_peekuser,
	[OP_POKEUSER] = op_pokeuser,
	[OP_READ_FILE] = op_read_file,
	[OP_READ_MEM] = op_read_mem,
	[OP_WRITE_MEM] = op_write_mem,
	[OP_INJECT_SYSCALL] = op_inject_syscall,
	[OP_KILL] = op_kill,
	[OP_BATCH] = op_batch,
	[OP_RSEQ_CONFIG] = op_rseq_config,
	[OP_PEEKSIGINFO] = op_peeksiginfo,
	[OP_GETSIGMASK] = op_getsigmask,
	[OP_SETSIGMASK] = op_setsigmask,
	[OP_READLINK] = op_readlink,
	[OP_LISTDIR] = op_listdir,
	[OP_SIGNAL] = op_signal,
	[OP_STEP] = op_step,
	[OP_DETACH] = op_detach,
	[OP_REAP] = op_reap,
	[OP_ATTACH] = op_attach,
	[OP_BULK_OPEN] = op_bulk_open,
	[OP_READ_MEM_BULK] = op_read_mem_bulk,
	[OP_WRITE_MEM_BULK] = op_write_mem_bulk,
	[OP_PAGEMAP] = op_pagemap,
	[OP_TRACE_FORKS] = op_trace_forks,
	[OP_RELEASE] = op_release,
};

/* Runs one op on c (whose payload reader is set up) and returns the status;
 * c->out then holds the response payload. */
static uint16_t execute(uint16_t op, struct call *c, bool nested)
{
	if (op >= OP_COUNT || !ops[op])
		fail(c, ENOSYS, "unknown op 0x%x", op);
	else if (nested && op == OP_BATCH)
		fail(c, EINVAL, "op: BATCH inside BATCH");
	else
		ops[op](c);
	return finish(c);
}

/* ------------------------------------------------------------------------ */
/* Framing. */

/* Returns bytes read: n, or less only at EOF; -1 on a read error. */
static ssize_t read_full(int fd, void *buf, size_t n)
{
	size_t done = 0;

	while (done < n) {
		ssize_t r = read(fd, (uint8_t *)buf + done, n - done);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		if (r == 0)
			break;
		done += (size_t)r;
	}
	return (ssize_t)done;
}

static int write_full(int fd, const void *buf, size_t n)
{
	size_t done = 0;

	while (done < n) {
		ssize_t r = write(fd, (const uint8_t *)buf + done, n - done);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		done += (size_t)r;
	}
	return 0;
}

static void __attribute__((noreturn)) shut_down(int code)
{
	kill_all();
	kill_detached();
	exit(code);
}

static void send_response(uint32_t id, uint16_t op, struct call *c, uint16_t status)
{
	uint8_t hdr[12];

	if (c->out.len > MAX_FRAME - 8) {
		size_t len = c->out.len;

		c->err = 0;
		fail(c, EFBIG, "response of %zu bytes exceeds the frame limit", len);
		status = finish(c);
	}
	put_le(hdr, 8 + c->out.len, 4);
	put_le(hdr + 4, id, 4);
	put_le(hdr + 8, op, 2);
	put_le(hdr + 10, status, 2);
	if (write_full(1, hdr, sizeof hdr) < 0 || write_full(1, c->out.p, c->out.len) < 0) {
		fprintf(stderr, "crh-agent: writing a response failed: %s\n", strerror(errno));
		shut_down(1);
	}
}

/* Serves one frame; returns false at end of input. */
static bool serve_one(void)
{
	uint8_t hdr[4];
	uint8_t *frame;
	uint32_t len, id;
	uint16_t op, flags, status;
	struct call c = { 0 };
	ssize_t n;

	n = read_full(0, hdr, sizeof hdr);
	if (n < 0) {
		fprintf(stderr, "crh-agent: reading stdin: %s\n", strerror(errno));
		return false;
	}
	if (n == 0)
		return false;
	if (n < (ssize_t)sizeof hdr) {
		fprintf(stderr, "crh-agent: stdin ended inside a frame length\n");
		return false;
	}
	len = (uint32_t)hdr[0] | (uint32_t)hdr[1] << 8 | (uint32_t)hdr[2] << 16 | (uint32_t)hdr[3] << 24;
	if (len > MAX_FRAME || len < 8) {
		/* Without a trustworthy length the stream cannot be resynchronised
		 * and there is no id to answer to. */
		fprintf(stderr, "crh-agent: protocol error: frame length %u\n", len);
		shut_down(2);
	}
	frame = malloc(len);
	if (!frame) {
		fprintf(stderr, "crh-agent: cannot allocate a %u-byte frame\n", len);
		shut_down(1);
	}
	n = read_full(0, frame, len);
	if (n != (ssize_t)len) {
		fprintf(stderr, "crh-agent: stdin ended inside a %u-byte frame (%zd bytes read)\n", len, n);
		free(frame);
		return false;
	}
	id = (uint32_t)frame[0] | (uint32_t)frame[1] << 8 | (uint32_t)frame[2] << 16 | (uint32_t)frame[3] << 24;
	op = (uint16_t)(frame[4] | frame[5] << 8);
	flags = (uint16_t)(frame[6] | frame[7] << 8);
	c.in = (struct rd){ .p = frame + 8, .len = len - 8 };
	if (flags) {
		fail(&c, EINVAL, "flags: must be 0, got 0x%x", flags);
		status = finish(&c);
	} else {
		status = execute(op, &c, false);
	}
	send_response(id, op, &c, status);
	wr_free(&c.out);
	free(frame);
	return true;
}

int main(void)
{
	int fd;

	/* Spawned stdio is dup2()ed onto 0-2; a closed descriptor there would
	 * let one of our own files take its number. */
	while ((fd = open("/dev/null", O_RDWR)) >= 0 && fd <= 2)
		;
	if (fd > 2)
		close(fd);

	/* An inherited SIG_IGN for SIGCHLD would make the kernel auto-reap
	 * tracees and suppress stop notifications. */
	signal(SIGCHLD, SIG_DFL);
	signal(SIGPIPE, SIG_IGN);
	/* Orphans of the programs it runs become its children (reap_orphans). */
	prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
	sigemptyset(&sigchld_set);
	sigaddset(&sigchld_set, SIGCHLD);
	sigprocmask(SIG_BLOCK, &sigchld_set, NULL);

	while (serve_one())
		;
	shut_down(0);
}
