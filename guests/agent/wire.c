/*
 * The payload codec of docs/agent-protocol.md — a checked reader and a growable
 * writer — the call a request is executed in, and whole reads and writes of a
 * descriptor.
 */
#include "agent.h"

#include <poll.h>
#include <time.h>

/* ------------------------------------------------------------------------ */
/* Payload reader: every read is checked against what is left, and the first
 * failure is remembered so an op can read all its fields and check once. */

size_t rd_left(const struct rd *r)
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

uint16_t rd_u16(struct rd *r, const char *field) { return (uint16_t)rd_le(r, 2, field); }
uint32_t rd_u32(struct rd *r, const char *field) { return (uint32_t)rd_le(r, 4, field); }
uint64_t rd_u64(struct rd *r, const char *field) { return rd_le(r, 8, field); }

/* Returns a pointer into the payload; NULL (with *n = 0) once anything failed. */
const uint8_t *rd_bytes(struct rd *r, const char *field, uint32_t *n)
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
char *rd_cstr(struct rd *r, const char *field)
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
uint32_t rd_count(struct rd *r, const char *field, size_t min_elem)
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

void strv_free(char **v)
{
	if (!v)
		return;
	for (char **p = v; *p; p++)
		free(*p);
	free(v);
}

/* array<string> as a NULL-terminated vector for execve. */
char **rd_strv(struct rd *r, const char *field)
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
pid_t rd_pid(struct rd *r)
{
	uint32_t v = rd_u32(r, "pid");

	if (!r->err[0] && (v == 0 || v > INT32_MAX))
		snprintf(r->err, sizeof r->err, "pid: %u is not a valid process id", v);
	return (pid_t)v;
}

/* ------------------------------------------------------------------------ */
/* Payload writer: a growable buffer; an allocation failure is sticky and
 * turns the whole response into ENOMEM. */

uint8_t *wr_grow(struct wr *w, size_t n)
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

void put_le(uint8_t *p, uint64_t v, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

void wr_le(struct wr *w, uint64_t v, unsigned n)
{
	uint8_t *p = wr_grow(w, n);

	if (p)
		put_le(p, v, n);
}

void wr_u16(struct wr *w, uint16_t v) { wr_le(w, v, 2); }
void wr_u32(struct wr *w, uint32_t v) { wr_le(w, v, 4); }
void wr_u64(struct wr *w, uint64_t v) { wr_le(w, v, 8); }

void wr_raw(struct wr *w, const void *data, size_t n)
{
	uint8_t *p = wr_grow(w, n);

	if (p && n)
		memcpy(p, data, n);
}

void wr_bytes(struct wr *w, const void *data, size_t n)
{
	wr_u32(w, (uint32_t)n);
	wr_raw(w, data, n);
}

void wr_str(struct wr *w, const char *s)
{
	wr_bytes(w, s, strlen(s));
}

/* For values whose length is only known afterwards (file contents, regsets):
 * reserve the u32 now and fill it in with wr_patch_u32(). */
size_t wr_mark(struct wr *w)
{
	wr_u32(w, 0);
	return w->len - 4;
}

void wr_patch_u32(struct wr *w, size_t at, uint32_t v)
{
	if (!w->oom)
		put_le(w->p + at, v, 4);
}

void wr_free(struct wr *w)
{
	free(w->p);
	*w = (struct wr){ 0 };
}

/* ------------------------------------------------------------------------ */
/* One request being executed: its payload, its response, its error. */

int fail(struct call *c, int err, const char *fmt, ...)
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
int fail_errno(struct call *c, const char *fmt, ...)
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
int parsed(struct call *c)
{
	if (c->in.err[0])
		return fail(c, EINVAL, "%s", c->in.err);
	if (rd_left(&c->in))
		return fail(c, EINVAL, "payload: %zu unexpected trailing bytes", rd_left(&c->in));
	return 0;
}

/* Replaces a failed op's partial output with the status-1 payload. */
uint16_t finish(struct call *c)
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

/*
 * How long a read or write waits for its descriptor before it looks again.
 * virtio_console can leave a reader asleep with the host's bytes already in
 * its ring. Seen under TCG (docs/platform.md): the agent asleep in read() of
 * a frame header on the port (wchan port_fops_read) for 120 s while the host
 * waited for its answer and neither socket between host and QEMU held a
 * byte; a SIGSTOP/SIGCONT made the read look again, and it found the request
 * and went on — about once in 160 tree checkpoints. The driver's poll looks
 * at the ring itself, so a bounded poll turns a lost wakeup into a delay of
 * at most this bound.
 */
#define WAKEUP_BOUND_MS 100
/* Looks that found the descriptor ready after a whole bound, said on stderr
 * (the console, over the port), the first few. Each is a lost wakeup or a
 * vCPU the host did not run for the bound: the guest cannot tell them apart. */
#define WAKEUP_REPORTS 5

static long long monotonic_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits until `fd` is ready for `events` (or hung up, or failed: the read or
 * write that follows says which). A non-blocking descriptor is not waited
 * for: its caller wants EAGAIN, not a wait. */
static void wait_ready(int fd, short events)
{
	static unsigned reported;
	struct pollfd p = { .fd = fd, .events = events };
	int flags = fcntl(fd, F_GETFL);

	if (flags < 0 || (flags & O_NONBLOCK))
		return;
	for (;;) {
		long long started = monotonic_ms();
		int r = poll(&p, 1, WAKEUP_BOUND_MS);

		if (r < 0 && errno == EINTR)
			continue;
		if (r == 0)
			continue;
		/* Ready only at the look after the bound: no wakeup came for it in time. */
		if (r > 0 && monotonic_ms() - started >= WAKEUP_BOUND_MS && reported < WAKEUP_REPORTS) {
			reported++;
			fprintf(stderr, "crh-agent: fd %d found %s only by looking again after %d ms (a lost wakeup, or a vCPU that did not run)\n", fd,
				events & POLLIN ? "readable" : "writable", WAKEUP_BOUND_MS);
		}
		return;
	}
}

/* Returns bytes read: n, or less only at EOF; -1 on a read error. */
ssize_t read_full(int fd, void *buf, size_t n)
{
	size_t done = 0;

	while (done < n) {
		ssize_t r;

		wait_ready(fd, POLLIN);
		r = read(fd, (uint8_t *)buf + done, n - done);
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

int write_full(int fd, const void *buf, size_t n)
{
	size_t done = 0;

	while (done < n) {
		ssize_t r;

		wait_ready(fd, POLLOUT);
		r = write(fd, (const uint8_t *)buf + done, n - done);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		done += (size_t)r;
	}
	return 0;
}
