/*
 * stepper: single-stepping with TF across a checkpoint.
 *
 *   stepper
 *
 * Installs a SIGTRAP handler that records the interrupted IP, sets
 * EFLAGS.TF with popf, runs a straight sequence of eight instructions
 * (step_seq .. step_end), clears TF again and prints the recorded trap
 * IPs as offsets from step_seq:
 *
 *   stepper traps=<n> ips=+a,+b,...
 *
 * TF set by popf traps after the instruction that follows the popf, then
 * after every instruction. The host checkpoints at the breakpoint on
 * step_mid, in the middle of the sequence, with TF set: a restore must
 * resume so that the list is exactly the uninterrupted one. A restorer that
 * loads EFLAGS with popf traps one instruction late, and records step_mid
 * twice.
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

/* TF on (popf), the sequence, TF off (popf). rax is the only register it uses. */
static void run_sequence(void)
{
	__asm__ volatile("pushfq\n"
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
			 "	pushfq\n"
			 "	andq $~0x100, (%%rsp)\n"
			 "	popfq\n"
			 ".globl step_end\n"
			 "step_end:\n"
			 "	nop\n"
			 :
			 :
			 : "rax", "cc", "memory");
}

int main(void)
{
	struct sigaction sa;
	char list[MAX_TRAPS * 8] = "";

	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_trap;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGTRAP, &sa, NULL);
	run_sequence();
	for (int i = 0; i < traps && i < MAX_TRAPS; i++) {
		char item[24];

		snprintf(item, sizeof item, "%s%+lld", i ? "," : "", (long long)(trap_ips[i] - (uint64_t)step_seq));
		strncat(list, item, sizeof list - strlen(list) - 1);
	}
	printf("stepper traps=%d ips=%s\n", traps, list);
	return 0;
}
