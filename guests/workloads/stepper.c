/*
 * stepper: single-stepping with TF across a checkpoint.
 *
 *   stepper [popf|traced]
 *
 * Runs a straight sequence of eight instructions (step_seq .. step_end)
 * that adds 1..7 to an accumulator, and prints the trap IPs its SIGTRAP
 * handler recorded, as offsets from step_seq, and the sum:
 *
 *   stepper traps=<n> sum=28 ips=+a,+b,...
 *
 * popf (the default): the program single-steps itself. It sets EFLAGS.TF
 * with popf before the sequence and clears it after; TF set by popf traps
 * after the instruction that follows the popf, then after every
 * instruction. The host checkpoints at the breakpoint on step_mid, in the
 * middle of the sequence, with TF set: a restore must resume so that the
 * list is exactly the uninterrupted one. A restorer that loads EFLAGS with
 * popf traps one instruction late, and records step_mid twice.
 *
 * traced: the same sequence without the program's own TF (the popf that
 * sets it is jumped over), for a tracer to single-step with
 * PTRACE_SINGLESTEP from step_seq to step_tail, where the epilogue that
 * clears TF begins; a tracer suppresses its step traps, so the handler
 * records nothing (traps=0) and the sum says the sequence ran once. (A
 * tracer that steps on over the epilogue's popf hands its TF to the
 * program: Linux takes a stepped popf for one that sets TF itself.)
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <ucontext.h>

#define MAX_TRAPS 64

static volatile uint64_t trap_ips[MAX_TRAPS];
static volatile int traps;

extern const char step_seq[];

static void on_trap(int sig, siginfo_t *si, void *ucv)
{
	ucontext_t *uc = ucv;

	(void)sig;
	(void)si;
	if (traps < MAX_TRAPS)
		trap_ips[traps] = (uint64_t)uc->uc_mcontext.gregs[REG_RIP];
	traps++;
}

/*
 * TF on (popf) unless own_tf is 0, the sequence, TF off (popf). The
 * accumulator lives in rax; the jump skips exactly the popf that sets TF,
 * so both modes run the same instructions from step_seq on.
 */
static uint64_t run_sequence(int own_tf)
{
	uint64_t acc = 0;

	__asm__ volatile("testl %k1, %k1\n"
			 "	jz step_seq\n"
			 "	pushfq\n"
			 "	orq $0x100, (%%rsp)\n"
			 "	popfq\n"
			 ".globl step_seq\n"
			 "step_seq:\n"
			 "	addq $1, %%rax\n"
			 "	addq $2, %%rax\n"
			 "	addq $3, %%rax\n"
			 ".globl step_mid\n"
			 "step_mid:\n"
			 "	addq $4, %%rax\n"
			 "	addq $5, %%rax\n"
			 "	addq $6, %%rax\n"
			 "	addq $7, %%rax\n"
			 ".globl step_tail\n"
			 "step_tail:\n"
			 "	pushfq\n"
			 "	andq $~0x100, (%%rsp)\n"
			 "	popfq\n"
			 ".globl step_end\n"
			 "step_end:\n"
			 "	nop\n"
			 : "+a"(acc)
			 : "r"(own_tf)
			 : "cc", "memory");
	return acc;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "popf";
	struct sigaction sa;
	char list[MAX_TRAPS * 8] = "";
	uint64_t sum;

	if (strcmp(mode, "popf") && strcmp(mode, "traced")) {
		fprintf(stderr, "usage: stepper [popf|traced]\n");
		return 2;
	}
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_trap;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGTRAP, &sa, NULL);
	sum = run_sequence(!strcmp(mode, "popf"));
	for (int i = 0; i < traps && i < MAX_TRAPS; i++) {
		char item[24];

		snprintf(item, sizeof item, "%s%+lld", i ? "," : "", (long long)(trap_ips[i] - (uint64_t)step_seq));
		strncat(list, item, sizeof list - strlen(list) - 1);
	}
	printf("stepper traps=%d sum=%llu ips=%s\n", traps, (unsigned long long)sum, list);
	return 0;
}
