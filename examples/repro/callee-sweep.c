/*
 * callee-sweep.c: a function that keeps its values in callee-saved
 * registers for a known handful of instructions — the boundaries a sweep
 * under `--regs partial` (callee-saved registers lost by the restore) must
 * name, and no others. sweep_callee is written in assembly so that its
 * boundaries do not move with the compiler:
 *
 *   boundary  instruction          live callee-saved value
 *   0         push %rbx            -
 *   1         push %r12            -
 *   2         mov  %rdi,%rbx       -
 *   3         lea  0x7(%rdi),%r12  rbx
 *   4         mov  %rbx,%rax       rbx r12
 *   5         imul %r12,%rax       rbx r12
 *   6         add  %rbx,%rax       rbx
 *   7         pop  %r12            - (the pops bring back what the pushes saved)
 *   8         pop  %rbx            -
 *   9         ret                  -
 *   10 …      main, then printf
 *
 * Before boundary 3 and after boundary 6 the registers hold nothing the
 * program reads again before writing it, so only 3-6 may differ.
 *
 *   crh repro examples/repro/callee-sweep.c --sweep sweep_callee --count 12
 */
#include <stdio.h>

long sweep_callee(long x);

__asm__(
	".text\n"
	".globl sweep_callee\n"
	".type sweep_callee, @function\n"
	"sweep_callee:\n"
	"	push %rbx\n"
	"	push %r12\n"
	"	mov %rdi, %rbx\n"
	"	lea 7(%rdi), %r12\n"
	"	mov %rbx, %rax\n"
	"	imul %r12, %rax\n"
	"	add %rbx, %rax\n"
	"	pop %r12\n"
	"	pop %rbx\n"
	"	ret\n"
	".size sweep_callee, .-sweep_callee\n");

int main(int argc, char **argv)
{
	(void)argv;
	/* x = 7 when run without arguments: 7 * 14 + 7 = 105 */
	printf("result %ld\n", sweep_callee(argc + 6));
	return 0;
}
