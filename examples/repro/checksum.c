/*
 * checksum.c: a checksum whose whole state lives in callee-saved registers
 * (rbx, rbp, r12-r15) across a call, the registers a 2015 entry-code patch
 * failed to restore. The checkpoint is taken on entry to checkpoint_here(),
 * halfway through the loop; a restore that loses those registers prints a
 * different checksum. The pid is printed too: a restore must keep it.
 *
 *   crh repro examples/repro/checksum.c --checkpoint-at checkpoint_here
 */
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

/* noipa: the compiler must assume the call clobbers every caller-saved register. */
__attribute__((noipa)) void checkpoint_here(void) {}

int main(void)
{
	uint64_t a = 0x9e3779b97f4a7c15ull, b = 0xbf58476d1ce4e5b9ull, c = 0x94d049bb133111ebull, d = 1;

	for (int i = 0; i < 200000; i++) {
		if (i == 100000)
			checkpoint_here();
		a += b ^ (c >> 7);
		b = (b << 13 | b >> 51) + d;
		c ^= a * 0xff51afd7ed558ccdull;
		d += c | 1;
	}
	printf("pid %d\nchecksum %016llx\n", (int)getpid(), (unsigned long long)(a ^ b ^ c ^ d));
	return 0;
}
