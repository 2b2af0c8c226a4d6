/*
 * sigstate: signal state across a checkpoint.
 *
 *   sigstate state        dispositions, mask, alternate stack, pending queues
 *   sigstate handler ill|segv|trap
 *                         stops inside the handler of a ud2 (#UD), a
 *                         privileged instruction (#GP) or an int3 (#BP trap)
 *   sigstate altstack     a handler that changes uc_stack in its frame
 *
 * state: installs a SIGUSR1 handler (SA_SIGINFO | SA_RESTART, blocking
 * SIGUSR2 while it runs), ignores SIGUSR2, installs a SIGRTMIN+1 handler
 * recording each value and a SIGSEGV handler on an alternate stack; blocks
 * SIGUSR1 and SIGRTMIN+1, queues SIGRTMIN+1 with the values 101, 202, 303
 * (process queue) and sends itself SIGUSR1 with tgkill (thread queue). Then
 * it calls sigstate_checkpoint() — the host checkpoints there — and checks
 * from the inside that every disposition, the mask, the alternate stack and
 * the pending set are what it had set up; unblocks and checks that SIGUSR1
 * arrives once and SIGRTMIN+1 three times with 101, 202, 303 in that order;
 * and finally faults on purpose to check that its SIGSEGV handler runs on
 * the alternate stack.
 *
 * handler: the handler calls sigstate_in_handler() — the host checkpoints
 * there — records EFLAGS.RF from the interrupted context, steps the saved
 * IP over the instruction (ud2 and hlt are 2 and 1 bytes; int3 has already
 * advanced) and returns through rt_sigreturn.
 *
 * altstack: sets an alternate stack A, sends itself SIGUSR2 (its handler
 * runs on the ordinary stack), and the handler calls sigstate_in_handler()
 * — the host checkpoints there — then writes a second stack B into the
 * uc_stack of its own frame and returns. rt_sigreturn installs the frame's
 * uc_stack as the alternate stack (the kernel's restore_altstack), so
 * sigaltstack must read back B afterwards.
 *
 * Prints "sigstate ok ..." and exits 0, or "sigstate mismatch: <items>" and
 * exits 1.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define EFLAGS_RF (1u << 16)

static char mismatches[1024];
static void mismatch(const char *what)
{
	strncat(mismatches, " ", sizeof mismatches - strlen(mismatches) - 1);
	strncat(mismatches, what, sizeof mismatches - strlen(mismatches) - 1);
}

/*
 * The host's breakpoints go on these. noipa: callers must assume the
 * calling convention (caller-saved registers clobbered), so what they keep
 * across the call lives in callee-saved registers — which a restore must
 * bring back.
 */
__attribute__((noipa, used)) void sigstate_checkpoint(void)
{
	__asm__ volatile("nop" ::: "memory");
}
__attribute__((noipa, used)) void sigstate_in_handler(void)
{
	__asm__ volatile("nop" ::: "memory");
}

static volatile int usr1_count, usr1_code;
static volatile int rt_values[8], rt_count;
static volatile int segv_on_altstack;
/* SIGSTKSZ is not a constant in glibc 2.34+; 64 KiB is ample for a handler that only longjmps. */
static char altstack[65536] __attribute__((aligned(16)));
static sigjmp_buf segv_return;
/* Page 0 is never mapped; through a volatile pointer the compiler cannot see that. */
static volatile int *volatile unmapped = (volatile int *)8;

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	usr1_count++;
	usr1_code = si->si_code;
}

static void on_rt(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	if (rt_count < 8)
		rt_values[rt_count] = si->si_value.sival_int;
	rt_count++;
}

static void on_segv(int sig, siginfo_t *si, void *uc)
{
	char here;

	(void)sig;
	(void)si;
	(void)uc;
	segv_on_altstack = &here >= altstack && &here < altstack + sizeof altstack;
	siglongjmp(segv_return, 1);
}

struct expected_action {
	int sig;
	struct sigaction act;
};

static int same_action(const struct sigaction *a, const struct sigaction *b)
{
	if (a->sa_sigaction != b->sa_sigaction || a->sa_flags != b->sa_flags)
		return 0;
	for (int s = 1; s < NSIG; s++)
		if (s != SIGKILL && s != SIGSTOP && sigismember(&a->sa_mask, s) != sigismember(&b->sa_mask, s))
			return 0;
	return 1;
}

static int state(void)
{
	struct expected_action actions[4];
	int rt = SIGRTMIN + 1, n = 0;
	sigset_t block, now, pending;
	stack_t ss = { .ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0 }, ss_now;
	union sigval v;

	memset(actions, 0, sizeof actions);
	actions[n].sig = SIGUSR1;
	actions[n].act.sa_sigaction = on_usr1;
	actions[n].act.sa_flags = SA_SIGINFO | SA_RESTART;
	sigemptyset(&actions[n].act.sa_mask);
	sigaddset(&actions[n].act.sa_mask, SIGUSR2);
	n++;
	actions[n].sig = SIGUSR2;
	actions[n].act.sa_handler = SIG_IGN;
	sigemptyset(&actions[n].act.sa_mask);
	n++;
	actions[n].sig = rt;
	actions[n].act.sa_sigaction = on_rt;
	actions[n].act.sa_flags = SA_SIGINFO;
	sigemptyset(&actions[n].act.sa_mask);
	n++;
	actions[n].sig = SIGSEGV;
	actions[n].act.sa_sigaction = on_segv;
	actions[n].act.sa_flags = SA_SIGINFO | SA_ONSTACK;
	sigemptyset(&actions[n].act.sa_mask);
	n++;
	if (sigaltstack(&ss, NULL) != 0)
		return perror("sigaltstack"), 2;
	for (int i = 0; i < n; i++) {
		if (sigaction(actions[i].sig, &actions[i].act, NULL) != 0)
			return perror("sigaction"), 2;
		/* What the kernel holds (glibc adds SA_RESTORER): the reference for after the checkpoint. */
		sigaction(actions[i].sig, NULL, &actions[i].act);
	}
	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigaddset(&block, rt);
	sigprocmask(SIG_BLOCK, &block, NULL);
	for (int i = 1; i <= 3; i++) {
		v.sival_int = 101 * i;
		if (sigqueue(getpid(), rt, v) != 0)
			return perror("sigqueue"), 2;
	}
	syscall(SYS_tgkill, getpid(), gettid(), SIGUSR1);

	sigstate_checkpoint();

	for (int i = 0; i < n; i++) {
		struct sigaction a;
		char what[32];

		sigaction(actions[i].sig, NULL, &a);
		if (!same_action(&a, &actions[i].act)) {
			snprintf(what, sizeof what, "action:%d", actions[i].sig);
			mismatch(what);
		}
	}
	sigprocmask(SIG_BLOCK, NULL, &now);
	for (int s = 1; s < NSIG; s++)
		if (s != SIGKILL && s != SIGSTOP && sigismember(&now, s) != sigismember(&block, s)) {
			mismatch("blocked");
			break;
		}
	sigaltstack(NULL, &ss_now);
	if (ss_now.ss_sp != ss.ss_sp || ss_now.ss_size != ss.ss_size || ss_now.ss_flags != 0)
		mismatch("altstack");
	sigpending(&pending);
	if (!sigismember(&pending, SIGUSR1) || !sigismember(&pending, rt))
		mismatch("pending");
	if (usr1_count || rt_count)
		mismatch("delivered-early");

	sigprocmask(SIG_UNBLOCK, &block, NULL);
	if (usr1_count != 1 || usr1_code != SI_TKILL)
		mismatch("usr1-delivery");
	if (rt_count != 3 || rt_values[0] != 101 || rt_values[1] != 202 || rt_values[2] != 303)
		mismatch("rt-queue");

	/* Without the handler the fault would end the run before it could report. */
	if (!strstr(mismatches, "action:11")) {
		if (sigsetjmp(segv_return, 1) == 0)
			*unmapped = 1;
		if (!segv_on_altstack)
			mismatch("segv-altstack");
	}

	if (mismatches[0]) {
		printf("sigstate mismatch:%s\n", mismatches);
		return 1;
	}
	printf("sigstate ok usr1=%d rt=%d,%d,%d altstack=%d\n", usr1_count, rt_values[0], rt_values[1], rt_values[2],
	       segv_on_altstack);
	return 0;
}

static volatile unsigned long handler_rf = ~0ul;
static volatile int handler_runs;

static void on_fault(int sig, siginfo_t *si, void *ucv)
{
	ucontext_t *uc = ucv;

	(void)si;
	sigstate_in_handler();
	handler_runs++;
	handler_rf = (uc->uc_mcontext.gregs[REG_EFL] & EFLAGS_RF) != 0;
	if (sig == SIGILL)
		uc->uc_mcontext.gregs[REG_RIP] += 2; /* ud2 */
	else if (sig == SIGSEGV)
		uc->uc_mcontext.gregs[REG_RIP] += 1; /* hlt */
}

static int handler(const char *kind)
{
	struct sigaction sa;
	int sig = !strcmp(kind, "ill") ? SIGILL : !strcmp(kind, "segv") ? SIGSEGV : !strcmp(kind, "trap") ? SIGTRAP : 0;
	volatile int after = 0;

	if (!sig) {
		fprintf(stderr, "sigstate: handler ill|segv|trap\n");
		return 2;
	}
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_fault;
	sa.sa_flags = SA_SIGINFO;
	sigaction(sig, &sa, NULL);
	if (sig == SIGILL)
		__asm__ volatile("ud2");
	else if (sig == SIGSEGV)
		__asm__ volatile("hlt"); /* privileged: #GP in user mode */
	else
		__asm__ volatile("int3");
	after = 1;
	if (handler_runs != 1 || !after) {
		printf("sigstate mismatch: handler-runs=%d\n", handler_runs);
		return 1;
	}
	printf("sigstate ok handler=%s rf=%lu\n", kind, handler_rf);
	return 0;
}

static char altstack_b[65536] __attribute__((aligned(16)));

static void on_usr2_swap_stack(int sig, siginfo_t *si, void *ucv)
{
	ucontext_t *uc = ucv;

	(void)sig;
	(void)si;
	sigstate_in_handler();
	handler_runs++;
	uc->uc_stack.ss_sp = altstack_b;
	uc->uc_stack.ss_size = sizeof altstack_b;
	uc->uc_stack.ss_flags = 0;
}

static int altstack_from_frame(void)
{
	stack_t a = { .ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0 }, now;
	struct sigaction sa;

	if (sigaltstack(&a, NULL) != 0)
		return perror("sigaltstack"), 2;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_usr2_swap_stack;
	sa.sa_flags = SA_SIGINFO; /* no SA_ONSTACK: on the ordinary stack sigreturn may change the alternate one */
	sigaction(SIGUSR2, &sa, NULL);
	raise(SIGUSR2);
	if (handler_runs != 1) {
		printf("sigstate mismatch: handler-runs=%d\n", handler_runs);
		return 1;
	}
	sigaltstack(NULL, &now);
	if (now.ss_sp != altstack_b || now.ss_size != sizeof altstack_b || now.ss_flags != 0) {
		printf("sigstate mismatch: altstack-from-frame (%s, size %zu, flags %d)\n",
		       now.ss_sp == altstack ? "still A" : now.ss_sp == altstack_b ? "B" : "neither A nor B", now.ss_size,
		       now.ss_flags);
		return 1;
	}
	printf("sigstate ok altstack=frame\n");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "state"))
		return state();
	if (argc == 2 && !strcmp(argv[1], "altstack"))
		return altstack_from_frame();
	if (argc == 3 && !strcmp(argv[1], "handler"))
		return handler(argv[2]);
	fprintf(stderr, "usage: sigstate state | sigstate handler ill|segv|trap | sigstate altstack\n");
	return 2;
}
