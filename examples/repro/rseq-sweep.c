/*
 * rseq-sweep.c: one rseq critical section, straight-line, for a sweep that
 * must find it. rseq_sweep_cs stores the descriptor into the C library's
 * rseq area, then increments a counter inside [start_ip, post_commit_ip):
 *
 *   boundary  instruction                  rseq_cs   inside the section
 *   0         mov %rdx,0x8(%rdi)           0         no
 *   1         nop             (rseq_armed) set       no (before start_ip)
 *   2         mov (%rsi),%rax (rseq_start) set       yes
 *   3         add $0x1,%rax                set       yes
 *   4         imul $0x3,%rax,%rax          set       yes
 *   5         mov %rax,(%rsi)  (commit)    set       yes
 *   6         xor %eax,%eax (post_commit)  set       no (the bound is exclusive)
 *   7         ret                          set       no
 *   8 …       main
 *
 * A task stopped inside the section (a breakpoint, a checkpoint) resumes at
 * its abort handler: the kernel's fixup on the way back to user mode. The
 * program retries after an abort and prints how many there were, so the
 * abort is visible in its output:
 *
 *   counter 3 aborts 0      (uninterrupted)
 *   counter 3 aborts 1      (stopped once inside the section)
 *
 *   crh repro examples/repro/rseq-sweep.c --sweep rseq_sweep_cs --count 12 [--rseq-fixup off]
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <sys/rseq.h>

int rseq_sweep_cs(struct rseq *area, uint64_t *counter, const struct rseq_cs *desc);

__asm__(
	".text\n"
	".globl rseq_sweep_cs\n"
	".type rseq_sweep_cs, @function\n"
	"rseq_sweep_cs:\n"
	"	movq %rdx, 8(%rdi)\n"
	".globl rseq_sweep_armed\n"
	"rseq_sweep_armed:\n"
	"	nop\n"
	".globl rseq_sweep_start\n"
	"rseq_sweep_start:\n"
	"	movq (%rsi), %rax\n"
	"	addq $1, %rax\n"
	"	imulq $3, %rax, %rax\n"
	"	movq %rax, (%rsi)\n"
	".globl rseq_sweep_post_commit\n"
	"rseq_sweep_post_commit:\n"
	"	xorl %eax, %eax\n"
	"	ret\n"
	/* ud1 with the signature as displacement: the kernel checks it at abort_ip - 4. */
	"	.byte 0x0f, 0xb9, 0x3d\n"
	"	.long 0x53053053\n"
	".globl rseq_sweep_abort\n"
	"rseq_sweep_abort:\n"
	"	movl $1, %eax\n"
	"	ret\n"
	".size rseq_sweep_cs, .-rseq_sweep_cs\n");

extern const char rseq_sweep_start[], rseq_sweep_post_commit[], rseq_sweep_abort[];

static struct rseq_cs desc;

int main(void)
{
	struct rseq *area;
	uint64_t counter = 0;
	int aborts = 0;

	if (__rseq_size == 0) {
		fprintf(stderr, "rseq-sweep: the C library did not register rseq\n");
		return 2;
	}
	area = (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
	desc.start_ip = (uintptr_t)rseq_sweep_start;
	desc.post_commit_offset = (uintptr_t)rseq_sweep_post_commit - (uintptr_t)rseq_sweep_start;
	desc.abort_ip = (uintptr_t)rseq_sweep_abort;
	/* An abort leaves the counter as it was: the retry computes the same value. */
	while (rseq_sweep_cs(area, &counter, &desc))
		aborts++;
	printf("counter %llu aborts %d\n", (unsigned long long)counter, aborts);
	return 0;
}
