/*
 * memfill: a process holding N MiB of private anonymous memory, every
 * word of it written with a value derived from its address, for the
 * checkpoint/restore benchmark (scripts/bench-cr.ts). It stops at ready()
 * (the host puts a breakpoint there), then checks every word and exits 0
 * when all are intact, 1 naming the first bad one.
 *
 * Usage: memfill MIB [UNTOUCHED_MIB] — a second, never-touched mapping of
 * UNTOUCHED_MIB shows what an image leaves out.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

static uint64_t word_at(const uint64_t *p)
{
	return ((uint64_t)(uintptr_t)p * 0x9e3779b97f4a7c15ull) | 1;
}

/* The host's breakpoint: everything is written, nothing checked yet. */
void __attribute__((noinline)) ready(volatile uint64_t *words, size_t n)
{
	__asm__ volatile("" : : "r"(words), "r"(n) : "memory");
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 1;
	size_t untouched = argc > 2 ? strtoul(argv[2], NULL, 10) : 0;
	size_t n = mib * (1u << 20) / sizeof(uint64_t);
	uint64_t *words = mmap(NULL, mib << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	void *spare = untouched ? mmap(NULL, untouched << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) : NULL;

	if (words == MAP_FAILED || spare == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	for (size_t i = 0; i < n; i++)
		words[i] = word_at(&words[i]);
	ready(words, n);
	for (size_t i = 0; i < n; i++) {
		if (words[i] != word_at(&words[i])) {
			printf("bad word %zu at %p: 0x%llx\n", i, (void *)&words[i], (unsigned long long)words[i]);
			return 1;
		}
	}
	printf("ok %zu MiB\n", mib);
	return 0;
}
