/*
 * memfill: a process of a chosen size, for measuring checkpoint/restore cost.
 *
 *   memfill MIB [UNTOUCHED_MIB]
 *
 * Maps MIB MiB of private anonymous memory, writes every byte of it from a
 * position-dependent pattern, calls memfill_checkpoint() — the host
 * checkpoints there — then reads every byte back. Prints
 * "memfill ok MIB MiB sum=<16 hex digits>" and exits 0, or
 * "memfill mismatch at offset N" and exits 1: a restore that loses or
 * corrupts any page shows. UNTOUCHED_MIB (default 0) maps a second private
 * anonymous mapping that is never touched, to show what an image leaves out
 * (the kernel may merge it with the written one into a single mapping).
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

__attribute__((noipa)) void memfill_checkpoint(void) {}

static uint64_t pattern(uint64_t i)
{
	uint64_t x = i * 0x9e3779b97f4a7c15ull;

	return x ^ (x >> 29);
}

int main(int argc, char **argv)
{
	long mib = argc > 1 ? strtol(argv[1], NULL, 10) : 1;
	long untouched = argc > 2 ? strtol(argv[2], NULL, 10) : 0;
	size_t words, bytes;
	uint64_t *mem, sum = 0;
	void *spare = NULL;

	if (mib < 1 || mib > 1024 || untouched < 0 || untouched > 1024) {
		fprintf(stderr, "usage: memfill MIB [UNTOUCHED_MIB] (1..1024, 0..1024)\n");
		return 2;
	}
	bytes = (size_t)mib << 20;
	words = bytes / sizeof *mem;
	mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (untouched > 0)
		spare = mmap(NULL, (size_t)untouched << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED || spare == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	for (size_t i = 0; i < words; i++)
		mem[i] = pattern(i);
	memfill_checkpoint();
	for (size_t i = 0; i < words; i++) {
		if (mem[i] != pattern(i)) {
			printf("memfill mismatch at offset %zu\n", i * sizeof *mem);
			return 1;
		}
		sum += mem[i] * (i | 1);
	}
	printf("memfill ok %ld MiB sum=%016" PRIx64 "\n", mib, sum);
	return 0;
}
