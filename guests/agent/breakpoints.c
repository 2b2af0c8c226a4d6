/*
 * Breakpoints a program cannot feel: how RUN delivers a SIGTRAP to a
 * program while one of ours is armed, and repairs what a forced one reset.
 */
#include "agent.h"

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

/* RUN's flag 1, for the call in progress. */
bool legacy_traps;

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
int deliver_sigtrap(pid_t tid, bool leave_stopped, bool *stopped)
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

struct signal_masks {
	unsigned long long ign, cgt;
	int found;
};

static bool scan_signal_masks(const char *line, void *arg)
{
	struct signal_masks *m = arg;

	m->found += sscanf(line, "SigIgn: %llx", &m->ign) + sscanf(line, "SigCgt: %llx", &m->cgt);
	return false;
}

/* SIGTRAP's bits of SigIgn and SigCgt in /proc/TID/status. */
static int sigtrap_disposition(pid_t tid, bool *ignored, bool *caught)
{
	struct signal_masks m = { 0 };

	if (scan_status(tid, scan_signal_masks, &m) < 0)
		return -1;
	*ignored = m.ign & SIGTRAP_BIT;
	*caught = m.cgt & SIGTRAP_BIT;
	return m.found == 2 ? 0 : -1;
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
int repair_trap_reset(struct call *c, pid_t tgid, pid_t tid, bool *repaired)
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
