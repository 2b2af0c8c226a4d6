/*
 * rep-sweep.c: a `rep movsb` of five bytes, for a sweep through the middle
 * of a string instruction. A single-step traps after every iteration, so
 * the walk stands at the rep instruction itself five times, with RCX the
 * bytes still to copy and RSI/RDI advanced past the ones done:
 *
 *   boundary  instruction     RCX  bytes done  live of RCX/RSI/RDI
 *   0         mov %rdx,%rcx   -    -           RSI RDI (the arguments)
 *   1         rep movsb       5    0           RCX RSI RDI
 *   2         rep movsb       4    1           RCX RSI RDI (after a non-final iteration)
 *   3         rep movsb       3    2           RCX RSI RDI
 *   4         rep movsb       2    3           RCX RSI RDI
 *   5         rep movsb       1    4           RCX RSI RDI
 *   6         mov %rdi,%rax   0    5           RDI (where the copy ended)
 *   7         ret             -    -           -
 *
 * A restore at 2-5 must resume the copy where it stood: no byte copied
 * twice or skipped, RSI/RDI/RCX continuing. The program copies into a
 * buffer that already holds other bytes and prints it whole, with where
 * RDI ended, so a lost or repeated iteration shows:
 *
 *   dst ..ABCDE... end +7
 *
 * (Back in main, RSI and RDI are live again as printf's arguments: a sweep
 * of 8 boundaries stops at the ret.)
 *
 *   crh repro examples/repro/rep-sweep.c --sweep rep_sweep --count 8 [--omit string-regs]
 */
#include <stdio.h>
#include <string.h>

/* Returns RDI after the copy: dst + n when every byte was copied once. */
char *rep_sweep(char *dst, const char *src, unsigned long n);

__asm__(
	".text\n"
	".globl rep_sweep\n"
	".type rep_sweep, @function\n"
	"rep_sweep:\n"
	"	mov %rdx, %rcx\n"
	"	rep movsb\n"
	"	mov %rdi, %rax\n"
	"	ret\n"
	".size rep_sweep, .-rep_sweep\n");

int main(void)
{
	static char dst[] = "..........";
	static const char src[] = "ABCDE";
	char *end = rep_sweep(dst + 2, src, 5);

	printf("dst %s end +%ld\n", dst, (long)(end - dst));
	return 0;
}
