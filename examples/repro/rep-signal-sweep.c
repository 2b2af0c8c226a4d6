/*
 * rep-signal-sweep.c: a `rep movsb` interrupted by a signal, for a sweep
 * that walks from inside the handler, through its rt_sigreturn, back into
 * the middle of the string instruction.
 *
 * A one-shot ITIMER_REAL alarm interrupts a 512 KiB `rep movsb` (tried
 * again, buffer cleared, until the alarm lands inside it: the handler sees
 * the interrupted RIP at rep_signal_insn). Then, and only then, the handler
 * calls rep_interrupted, where a sweep starts:
 *
 *   rep_interrupted's ret, the handler's return, __restore_rt (mov $15,%rax;
 *   syscall: rt_sigreturn) — the rep's RCX/RSI/RDI are in the signal frame,
 *   not in registers —, then rep_signal_insn again and again, one boundary
 *   per iteration: RCX the bytes left, RSI/RDI advanced.
 *
 * The program checks the copy whole and prints
 *
 *   copy of 524288 bytes: exact; interrupted inside the rep: yes
 *
 * so a restore that repeats, skips or misplaces an iteration shows.
 *
 *   crh repro examples/repro/rep-signal-sweep.c --sweep rep_interrupted --count 24 [--omit string-regs]
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <ucontext.h>

#define COPY_BYTES (512 * 1024)
#define TRIES 1000

void rep_signal_copy(char *dst, const char *src, unsigned long n);
extern const char rep_signal_insn[];

__asm__(
	".text\n"
	".globl rep_signal_copy\n"
	".type rep_signal_copy, @function\n"
	"rep_signal_copy:\n"
	"	mov %rdx, %rcx\n"
	".globl rep_signal_insn\n"
	"rep_signal_insn:\n"
	"	rep movsb\n"
	"	ret\n"
	".size rep_signal_copy, .-rep_signal_copy\n");

static char src[COPY_BYTES], dst[COPY_BYTES];
static volatile sig_atomic_t fired, in_rep;

/* Where the sweep starts: called from the handler only when the alarm interrupted the rep. */
__attribute__((noinline, used)) void rep_interrupted(void)
{
	__asm__ volatile("" : : : "memory");
}

static void on_alarm(int sig, siginfo_t *info, void *context)
{
	const ucontext_t *uc = context;

	(void)sig;
	(void)info;
	fired = 1;
	if (!in_rep && uc->uc_mcontext.gregs[REG_RIP] == (greg_t)(uintptr_t)rep_signal_insn) {
		in_rep = 1;
		rep_interrupted();
	}
}

int main(void)
{
	struct sigaction sa;
	struct itimerval once = { { 0, 0 }, { 0, 200 } };
	size_t i;
	int tries;

	for (i = 0; i < COPY_BYTES; i++)
		src[i] = (char)(i * 7 + i / 4096);
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_alarm;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGALRM, &sa, NULL);
	for (tries = 0; !in_rep && tries < TRIES; tries++) {
		memset(dst, 0, sizeof dst);
		fired = 0;
		setitimer(ITIMER_REAL, &once, NULL);
		rep_signal_copy(dst, src, COPY_BYTES);
		while (!fired)
			;
	}
	printf("copy of %d bytes: %s; interrupted inside the rep: %s\n", COPY_BYTES, memcmp(dst, src, COPY_BYTES) ? "WRONG" : "exact",
	       in_rep ? "yes" : "no");
	return in_rep && !memcmp(dst, src, COPY_BYTES) ? 0 : 1;
}
