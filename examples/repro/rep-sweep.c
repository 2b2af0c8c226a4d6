/*
 * rep-sweep.c: a `rep movsb` of five bytes, for a sweep through the middle
 * of a string instruction. A single-step traps after every iteration, so
 * the walk stands at the rep instruction itself five times, with RCX the
 * bytes still to copy and RSI/RDI advanced past the ones done:
 *
 *   boundary  instruction   RCX  done
 *   0         mov %rdx,%rcx  -    -
 *   1         rep movsb      5    0
 *   2         rep movsb      4    1   (after a non-final iteration)
 *   3         rep movsb      3    2
 *   4         rep movsb      2    3
 *   5         rep movsb      1    4
 *   6         ret            0    5
 *   7 …       main
 *
 * A restore at 2-5 must resume the copy where it stood: no byte copied
 * twice or skipped, RSI/RDI/RCX continuing. The program copies into a
 * buffer that already holds other bytes and prints it whole, with where
 * RDI ended, so a lost or repeated iteration shows.
 *
 *   crh repro examples/repro/rep-sweep.c --sweep rep_sweep --count 12
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
