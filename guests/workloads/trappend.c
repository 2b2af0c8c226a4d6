/*
 * trappend: a task that blocks SIGTRAP with one of its own pending while a
 * data watchpoint (DR1, armed by the host as a debugger would: a watchpoint
 * is ptrace state, no program arms its own debug registers) watches
 * `watched` — for cases/sigtrap-pending: checkpointed in that state, the
 * restore must leave the pending SIGTRAP one, blocked, and delivered when
 * the program unblocks it, exactly as natively, and the watchpoint firing
 * on every later store.
 *
 *   trappend [WINDOW_MS]        WINDOW_MS defaults to 4000
 *
 * It installs a SIGTRAP handler (SA_SIGINFO), stores to `watched` once,
 * passes trap_block (the host's breakpoint, SIGTRAP still unblocked there),
 * blocks SIGTRAP and queues one to itself with sigqueue (si_code SI_QUEUE,
 * value 0x5eed), then waits until WINDOW_MS after that on CLOCK_MONOTONIC
 * (clock_nanosleep TIMER_ABSTIME, again after EINTR) — where the host
 * interrupts it for the checkpoint. Then it checks SIGTRAP is still pending
 * and still blocked and its handler has not run, unblocks it (the handler
 * runs once, with the SI_QUEUE siginfo), stores to `watched` ROUNDS more
 * times, and prints
 *
 *   trappend pending=1 blocked=1 delivered=1 code=SI_QUEUE value=0x5eed pending-after=0 stores=4
 *
 * exiting 0, or 1 when any of those differs. The stores happen only while
 * SIGTRAP is unblocked: a watchpoint trap while it is blocked is forced by
 * the kernel (force_sig_fault), which unblocks SIGTRAP and resets the
 * handler to SIG_DFL — not something a debugger's watchpoint may cause.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ROUNDS 3

/* Global, so the host can find it by name; 64-byte aligned so no other data shares its line. */
volatile uint64_t watched __attribute__((aligned(64)));

static volatile sig_atomic_t delivered;
static volatile int delivered_code;
static volatile int delivered_value;

static void on_trap(int sig, siginfo_t *si, void *ctx)
{
	(void)sig;
	(void)ctx;
	delivered++;
	delivered_code = si->si_code;
	delivered_value = si->si_value.sival_int;
}

void __attribute__((noinline)) trap_block(void)
{
	__asm__ volatile("" ::: "memory");
}

static int is_member(int sig, int pending)
{
	sigset_t set;

	if ((pending ? sigpending(&set) : sigprocmask(SIG_BLOCK, NULL, &set)) != 0)
		return -1;
	return sigismember(&set, sig);
}

int main(int argc, char **argv)
{
	long window_ms = argc > 1 ? atol(argv[1]) : 4000;
	struct sigaction sa;
	struct timespec deadline;
	sigset_t trap;
	union sigval value = { .sival_int = 0x5eed };
	int stores = 0, pending, blocked, pending_after;

	setvbuf(stdout, NULL, _IONBF, 0);
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_trap;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTRAP, &sa, NULL) != 0)
		return 2;
	watched = 1;
	stores++;
	trap_block();
	sigemptyset(&trap);
	sigaddset(&trap, SIGTRAP);
	if (sigprocmask(SIG_BLOCK, &trap, NULL) != 0 || sigqueue(getpid(), SIGTRAP, value) != 0)
		return 2;
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += window_ms / 1000;
	deadline.tv_nsec += (window_ms % 1000) * 1000000L;
	if (deadline.tv_nsec >= 1000000000L) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000L;
	}
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, NULL) == EINTR)
		;
	pending = is_member(SIGTRAP, 1);
	blocked = is_member(SIGTRAP, 0);
	int before = delivered;
	sigprocmask(SIG_UNBLOCK, &trap, NULL);
	for (int i = 0; i < ROUNDS; i++) {
		watched = (uint64_t)i + 2;
		stores++;
	}
	pending_after = is_member(SIGTRAP, 1);
	int ok = pending == 1 && blocked == 1 && before == 0 && delivered == 1 && delivered_code == SI_QUEUE &&
		 delivered_value == 0x5eed && pending_after == 0;
	printf("trappend pending=%d blocked=%d delivered=%d code=%s value=0x%x pending-after=%d stores=%d\n", pending, blocked,
	       (int)delivered, delivered_code == SI_QUEUE ? "SI_QUEUE" : delivered ? "other" : "none", delivered_value,
	       pending_after, stores);
	return ok ? 0 : 1;
}
