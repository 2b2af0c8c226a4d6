/*
 * avxhold: a program whose state lives in the AVX upper halves across a
 * checkpoint, for restores onto another CPU model (cases/restore-elsewhere).
 *
 * Checks that AVX is usable (CPUID.1:ECX AVX and OSXSAVE, XCR0 with SSE and
 * YMM), loads ymm0-ymm15 with distinct 256-bit patterns, and reaches the
 * label avx_checkpoint (the host's breakpoint) with them held only in the
 * registers — one asm block, so no compiler-generated code touches them.
 * After it each register is stored, compared with its pattern, and folded
 * with vpxor into one checksum. Prints
 *
 *   avxhold ymm=16/16 sum=<hex>
 *
 * and exits 0 when all 16 survived, 1 otherwise (2: no AVX here). A
 * restore that lost the xstate, or put the process on a CPU without YMM,
 * shows in the count (or the process dies of SIGILL at the first vmovdqu).
 */
#include <cpuid.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define NREGS 16

static uint8_t patterns[NREGS][32] __attribute__((aligned(32)));
static uint8_t held[NREGS][32] __attribute__((aligned(32)));

static int avx_usable(void)
{
	unsigned int a, b, c, d, lo, hi;

	if (!__get_cpuid(1, &a, &b, &c, &d))
		return 0;
	if (!(c & bit_AVX) || !(c & bit_OSXSAVE))
		return 0;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return (lo & 6) == 6;
}

int main(void)
{
	uint8_t sum[32] __attribute__((aligned(32)));
	int same = 0;

	setvbuf(stdout, NULL, _IONBF, 0);
	if (!avx_usable()) {
		printf("avxhold avx absent\n");
		return 2;
	}
	for (int r = 0; r < NREGS; r++)
		for (int i = 0; i < 32; i++)
			patterns[r][i] = (uint8_t)(0x11 * (r + 1) + 7 * i + (i >= 16 ? 0x80 : 0));

	__asm__ volatile(
		"vmovdqa 0(%0), %%ymm0\n\t"
		"vmovdqa 32(%0), %%ymm1\n\t"
		"vmovdqa 64(%0), %%ymm2\n\t"
		"vmovdqa 96(%0), %%ymm3\n\t"
		"vmovdqa 128(%0), %%ymm4\n\t"
		"vmovdqa 160(%0), %%ymm5\n\t"
		"vmovdqa 192(%0), %%ymm6\n\t"
		"vmovdqa 224(%0), %%ymm7\n\t"
		"vmovdqa 256(%0), %%ymm8\n\t"
		"vmovdqa 288(%0), %%ymm9\n\t"
		"vmovdqa 320(%0), %%ymm10\n\t"
		"vmovdqa 352(%0), %%ymm11\n\t"
		"vmovdqa 384(%0), %%ymm12\n\t"
		"vmovdqa 416(%0), %%ymm13\n\t"
		"vmovdqa 448(%0), %%ymm14\n\t"
		"vmovdqa 480(%0), %%ymm15\n\t"
		".globl avx_checkpoint\n\t"
		".type avx_checkpoint, @function\n"
		"avx_checkpoint:\n\t"
		"nop\n\t"
		"vmovdqa %%ymm0, 0(%1)\n\t"
		"vmovdqa %%ymm1, 32(%1)\n\t"
		"vmovdqa %%ymm2, 64(%1)\n\t"
		"vmovdqa %%ymm3, 96(%1)\n\t"
		"vmovdqa %%ymm4, 128(%1)\n\t"
		"vmovdqa %%ymm5, 160(%1)\n\t"
		"vmovdqa %%ymm6, 192(%1)\n\t"
		"vmovdqa %%ymm7, 224(%1)\n\t"
		"vmovdqa %%ymm8, 256(%1)\n\t"
		"vmovdqa %%ymm9, 288(%1)\n\t"
		"vmovdqa %%ymm10, 320(%1)\n\t"
		"vmovdqa %%ymm11, 352(%1)\n\t"
		"vmovdqa %%ymm12, 384(%1)\n\t"
		"vmovdqa %%ymm13, 416(%1)\n\t"
		"vmovdqa %%ymm14, 448(%1)\n\t"
		"vmovdqa %%ymm15, 480(%1)\n\t"
		".size avx_checkpoint, . - avx_checkpoint\n\t"
		"vzeroupper"
		:
		: "r"(patterns), "r"(held)
		: "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12",
		  "xmm13", "xmm14", "xmm15");

	memset(sum, 0, sizeof sum);
	for (int r = 0; r < NREGS; r++) {
		same += memcmp(held[r], patterns[r], 32) == 0;
		__asm__ volatile("vmovdqa (%1), %%ymm0\n\t"
				 "vpxor (%0), %%ymm0, %%ymm0\n\t"
				 "vmovdqa %%ymm0, (%1)\n\t"
				 "vzeroupper"
				 :
				 : "r"(held[r]), "r"(sum)
				 : "memory", "xmm0");
	}
	printf("avxhold ymm=%d/%d sum=", same, NREGS);
	for (int i = 31; i >= 0; i--)
		printf("%02x", sum[i]);
	printf("\n");
	return same == NREGS ? 0 : 1;
}
