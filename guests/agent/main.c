/*
 * crh-agent: the in-guest ptrace executor of cr-harness.
 *
 * It reads framed requests on stdin, performs one ptrace primitive per
 * request and writes the kernel's answer on stdout. The wire protocol is
 * specified in docs/agent-protocol.md; the agent implements exactly that and
 * makes no decisions of its own. Diagnostics go to stderr only, because
 * stdout carries nothing but frames.
 *
 * This file is the entry point and the dispatch: HELLO, BATCH, the op table
 * (from opcodes.h) and one frame read, executed and answered at a time. The
 * other parts, one job each (agent.h declares what they share):
 *   wire.c         payload reader and writer, the call, whole reads/writes
 *   tracee.c       the table of traced tasks, waits, kill and reap
 *   spawn.c        SPAWN
 *   run.c          RUN and STEP: the run/step state machine
 *   breakpoints.c  breakpoints a program cannot feel (RUN's SIGTRAP handling)
 *   primitives.c   registers, user area, INJECT_SYSCALL, KILL, signal state
 *   memory.c       ptrace word helpers, READ_FILE, READ/WRITE_MEM, READLINK, LISTDIR
 *   bulk.c         the bulk data port and PAGEMAP
 *   frames.c       PAGE_FRAMES: page frames for reads and writes in guest RAM
 *   handoff.c      DETACH, REAP, REAP_ORPHANS, ATTACH (handing a process to CRIU and back)
 *   port.c         serving sessions on the agent port; CHDIR, RESEED, KMSG
 */
#include "agent.h"

int op_hello(struct call *c)
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

int op_batch(struct call *c)
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

/* Indexed by opcode; a code with no op is NULL. */
static const op_fn ops[] = {
#define AGENT_OP(code, NAME, name) [OP_##NAME] = op_##name,
	AGENT_OPCODES(AGENT_OP)
#undef AGENT_OP
};

/* Runs one op on c (whose payload reader is set up) and returns the status;
 * c->out then holds the response payload. */
uint16_t execute(uint16_t op, struct call *c, bool nested)
{
	if (op >= sizeof ops / sizeof ops[0] || !ops[op])
		fail(c, ENOSYS, "unknown op 0x%x", op);
	else if (nested && op == OP_BATCH)
		fail(c, EINVAL, "op: BATCH inside BATCH");
	else
		ops[op](c);
	return finish(c);
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

int serve_session(void)
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

/* No arguments: one session on stdin/stdout (an SSH exec, a local test).
 * `--port NAME`: sessions on the virtio-serial port NAME (port.c). */
int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "--port"))
		return serve_port(argv[2], serve_session);
	if (argc != 1) {
		fprintf(stderr, "usage: crh-agent [--port NAME]\n");
		return 2;
	}
	return serve_session();
}
