/*
 * rseq-flags: does the kernel still honour an rseq critical section whose
 * rseq_cs carries the deprecated RSEQ_CS_FLAG_NO_RESTART_ON_* flags?
 *
 *   rseq-flags FLAGS    (e.g. 0, or 4 = NO_RESTART_ON_MIGRATE)
 *
 * Uses the C library's own rseq registration (glibc 2.35+ registers every
 * thread). A 5 ms interval timer interrupts a critical section that spins
 * forever; on the way back to user mode the kernel must apply the rseq fixup.
 * Prints "outcome=abort" and exits 0 when the section was aborted to its
 * abort handler. A kernel that rejects the flags (6.0 and later) kills the
 * process with SIGSEGV instead; the host reads that from the wait status.
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/rseq.h>
#include <sys/time.h>

/* Spins in a critical section until the kernel aborts it: returns 1 from the
 * abort handler. rdi = &rseq->rseq_cs, rsi = the descriptor. The 4 bytes
 * before the abort label are the signature glibc registered. */
uint64_t crh_spin_in_cs(volatile uint64_t *rseq_cs, const struct rseq_cs *cs);
extern const char crh_cs_start[], crh_cs_post_commit[], crh_cs_abort[];
__asm__(".text\n"
	".globl crh_spin_in_cs\n"
	".type crh_spin_in_cs, @function\n"
	"crh_spin_in_cs:\n"
	"	movq %rsi, (%rdi)\n"
	".globl crh_cs_start\n"
	"crh_cs_start:\n"
	"	jmp crh_cs_start\n"
	".globl crh_cs_post_commit\n"
	"crh_cs_post_commit:\n"
	"	xorl %eax, %eax\n"
	"	ret\n"
	"	.long 0x53053053\n"
	".globl crh_cs_abort\n"
	"crh_cs_abort:\n"
	"	movl $1, %eax\n"
	"	ret\n"
	".size crh_spin_in_cs, . - crh_spin_in_cs\n");

static void on_alarm(int sig)
{
	(void)sig;
}

int main(int argc, char **argv)
{
	static struct rseq_cs cs __attribute__((aligned(32)));
	struct itimerval every5ms = { { 0, 5000 }, { 0, 5000 } };
	struct sigaction sa;
	struct rseq *area;
	char *end;

	if (argc != 2) {
		fprintf(stderr, "usage: rseq-flags FLAGS\n");
		return 2;
	}
	cs.flags = (uint32_t)strtoul(argv[1], &end, 0);
	if (*end) {
		fprintf(stderr, "rseq-flags: bad FLAGS \"%s\"\n", argv[1]);
		return 2;
	}
	if (__rseq_size == 0) {
		printf("outcome=unregistered\n");
		return 3;
	}
	area = (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
	cs.version = 0;
	cs.start_ip = (uintptr_t)crh_cs_start;
	cs.post_commit_offset = (uintptr_t)crh_cs_post_commit - (uintptr_t)crh_cs_start;
	cs.abort_ip = (uintptr_t)crh_cs_abort;

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_alarm;
	sigaction(SIGALRM, &sa, NULL);
	setitimer(ITIMER_REAL, &every5ms, NULL);
	if (crh_spin_in_cs((volatile uint64_t *)&area->rseq_cs, &cs) != 1) {
		printf("outcome=committed\n");
		return 1;
	}
	printf("outcome=abort\n");
	return 0;
}
