/*
 * fsgs: FS/GS bases written with WRFSBASE/WRGSBASE under non-zero segment
 * selectors, across a checkpoint.
 *
 * Loads the user data selector (0x2b) into %fs and %gs — which loads their
 * bases from the descriptor, 0 — then writes the bases with WRFSBASE (the
 * C library's TLS block again) and WRGSBASE (a block of its own), so that
 * selector and base disagree, as only FSGSBASE allows. Calls
 * fsgs_checkpoint() (the host's breakpoint), then reads both selectors and
 * bases back, a word through %gs, and a thread-local variable through %fs:
 *
 *   fsgs fs=0x2b gs=0x2b fsbase=tls gsbase=block gs:8=0x5eed5eed5eed5eed tls=7
 *
 * Exits 0 when all of it holds, 1 otherwise, 2 when the kernel does not
 * let user mode run WRFSBASE (no HWCAP2_FSGSBASE).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <sys/auxv.h>

#define HWCAP2_FSGSBASE (1UL << 1)
#define USER_DS 0x2b

static uint64_t block[4] = { 0x1111111111111111ULL, 0x5eed5eed5eed5eedULL, 0, 0 };
static __thread volatile int tls_word = 7;

void __attribute__((noinline)) fsgs_checkpoint(void)
{
	__asm__ volatile("" ::: "memory");
}

static uint64_t rdfsbase(void)
{
	uint64_t v;

	__asm__ volatile("rdfsbase %0" : "=r"(v));
	return v;
}

static uint64_t rdgsbase(void)
{
	uint64_t v;

	__asm__ volatile("rdgsbase %0" : "=r"(v));
	return v;
}

int main(void)
{
	uint64_t tls, fsbase, gsbase, through_gs;
	unsigned int fs, gs, sel = USER_DS;
	int tls_value;

	if (!(getauxval(AT_HWCAP2) & HWCAP2_FSGSBASE)) {
		printf("fsgs unavailable: no HWCAP2_FSGSBASE\n");
		return 2;
	}
	tls = rdfsbase();
	/* Loading %fs zeroes its base: nothing may touch TLS until WRFSBASE puts it back. */
	__asm__ volatile("mov %0, %%fs\n\twrfsbase %1\n\tmov %0, %%gs\n\twrgsbase %2"
			 :
			 : "r"(sel), "r"(tls), "r"((uint64_t)(uintptr_t)block)
			 : "memory");

	fsgs_checkpoint();

	__asm__ volatile("mov %%fs, %0\n\tmov %%gs, %1" : "=r"(fs), "=r"(gs));
	fsbase = rdfsbase();
	gsbase = rdgsbase();
	__asm__ volatile("mov %%gs:8, %0" : "=r"(through_gs));
	tls_value = tls_word;
	printf("fsgs fs=%#x gs=%#x fsbase=%s gsbase=%s gs:8=%#llx tls=%d\n", fs, gs, fsbase == tls ? "tls" : "other",
	       gsbase == (uint64_t)(uintptr_t)block ? "block" : "other", (unsigned long long)through_gs, tls_value);
	return fs == USER_DS && gs == USER_DS && fsbase == tls && gsbase == (uint64_t)(uintptr_t)block && through_gs == block[1] &&
			       tls_value == 7
		       ? 0
		       : 1;
}
