/*
 * selfstep: a program that single-steps itself under its own SIGTRAP
 * handler, and prints what the handler saw — so that any debugger (or
 * checkpoint harness) that changes its SIGTRAPs shows in its output.
 *
 *   selfstep
 *
 * It installs selfstep_handler (SA_SIGINFO; SIGTRAP blocked while it runs,
 * as by default), sets EFLAGS.TF with popf, runs a straight sequence of
 * eight additions (self_seq .. self_tail, self_mid in the middle), clears
 * TF with popf, then executes an int3 of its own (self_int3). The sequence
 * also stores to self_cell (self_store), so that a write watchpoint's trap
 * and the program's step trap come from one instruction. Each trap is
 * recorded with its si_code and its si_addr and saved RIP as offsets from
 * self_seq. Output (one line per trap, then a summary):
 *
 *   trap 1 code=2 addr=+4 rip=+4
 *   ...
 *   int3 code=128 rip=+N
 *   selfstep traps=N sum=28
 *
 * A harness that puts its execute breakpoint on self_mid (inside the
 * stepped sequence) or on selfstep_handler (where SIGTRAP is blocked) must
 * leave this output as it is natively: a SIGTRAP the kernel forces while
 * SIGTRAP is blocked resets the handler to SIG_DFL, and the next step trap
 * then kills the program. A harness watching self_cell sees its hit in the
 * same #DB as the program's step (DR6 B0 and BS): suppressing that SIGTRAP
 * would lose one of the program's traps.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <ucontext.h>

#define MAX_TRAPS 64

struct trap {
	int code;
	uint64_t addr, rip;
};

static volatile struct trap seen[MAX_TRAPS];
static volatile int traps;

/* Written by the stepped sequence (self_store): a write watchpoint on it
 * triggers on the same instruction as the program's own step trap. */
volatile uint64_t self_cell;

extern const char self_seq[];

void selfstep_handler(int sig, siginfo_t *si, void *ucv);

void __attribute__((noinline)) selfstep_handler(int sig, siginfo_t *si, void *ucv)
{
	ucontext_t *uc = ucv;

	(void)sig;
	if (traps < MAX_TRAPS) {
		seen[traps].code = si->si_code;
		seen[traps].addr = (uint64_t)si->si_addr;
		seen[traps].rip = (uint64_t)uc->uc_mcontext.gregs[REG_RIP];
	}
	traps++;
}

static uint64_t run_sequence(void)
{
	uint64_t acc = 0;

	__asm__ volatile("pushfq\n"
			 "	orq $0x100, (%%rsp)\n"
			 "	popfq\n"
			 ".globl self_seq\n"
			 "self_seq:\n"
			 "	addq $1, %%rax\n"
			 "	addq $2, %%rax\n"
			 "	addq $3, %%rax\n"
			 ".globl self_mid\n"
			 "self_mid:\n"
			 "	addq $4, %%rax\n"
			 "	addq $5, %%rax\n"
			 ".globl self_store\n"
			 "self_store:\n"
			 "	movq %%rax, self_cell(%%rip)\n"
			 "	addq $6, %%rax\n"
			 "	addq $7, %%rax\n"
			 ".globl self_tail\n"
			 "self_tail:\n"
			 "	pushfq\n"
			 "	andq $~0x100, (%%rsp)\n"
			 "	popfq\n"
			 ".globl self_int3\n"
			 "self_int3:\n"
			 "	int3\n"
			 : "+a"(acc)
			 :
			 : "cc", "memory");
	return acc;
}

static long off(uint64_t a)
{
	return (long)(a - (uint64_t)self_seq);
}

int main(void)
{
	struct sigaction sa;
	uint64_t sum;
	int n;

	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = selfstep_handler;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTRAP, &sa, NULL) < 0) {
		perror("sigaction");
		return 1;
	}
	sum = run_sequence();
	n = traps < MAX_TRAPS ? traps : MAX_TRAPS;
	for (int i = 0; i < n; i++) {
		if (seen[i].code == SI_KERNEL)
			printf("int3 code=%d rip=%+ld\n", seen[i].code, off(seen[i].rip));
		else
			printf("trap %d code=%d addr=%+ld rip=%+ld\n", i + 1, seen[i].code, off(seen[i].addr), off(seen[i].rip));
	}
	printf("selfstep traps=%d sum=%llu\n", traps, (unsigned long long)sum);
	return sum == 28 ? 0 : 1;
}
