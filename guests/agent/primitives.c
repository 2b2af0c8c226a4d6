/*
 * The per-thread primitives: registers and regsets, the user area, an
 * injected system call, KILL, and signal state (rseq configuration, SIGNAL,
 * pending queues, the blocked mask).
 */
#include "agent.h"

int op_getregs(struct call *c)
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

int op_setregs(struct call *c)
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

int op_getregset(struct call *c)
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

int op_setregset(struct call *c)
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

int op_peekuser(struct call *c)
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

int op_pokeuser(struct call *c)
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

/* Puts the process back as INJECT_SYSCALL found it; returns -1 with errno. */
static int inject_restore(pid_t pid, uint64_t base, uint64_t word, struct user_regs_struct *saved)
{
	if (poke_data(pid, base, word) < 0)
		return -1;
	return ptrace(PTRACE_SETREGS, pid, 0, saved) < 0 ? -1 : 0;
}

int op_inject_syscall(struct call *c)
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

int op_kill(struct call *c)
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

int op_rseq_config(struct call *c)
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

int op_signal(struct call *c)
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
int op_peeksiginfo(struct call *c)
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
int op_getsigmask(struct call *c)
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
int op_setsigmask(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	uint64_t mask = rd_u64(&c->in, "mask");

	if (parsed(c))
		return -1;
	if (ptrace(PTRACE_SETSIGMASK, pid, (void *)sizeof mask, &mask) < 0)
		return fail_errno(c, "PTRACE_SETSIGMASK %d 0x%llx", (int)pid, (unsigned long long)mask);
	return 0;
}
