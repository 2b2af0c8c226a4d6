/*
 * ready.c: a program that says itself when to checkpoint it. After a
 * warm-up it writes its pid to the file named by $CRH_READY_FILE (set by
 * crh), then keeps hashing in 30 rounds with a 10 ms pause after each (so
 * there is time to catch it on any host); it prints its pid and the hash.
 *
 *   crh repro examples/repro/ready.c --when-ready
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static uint64_t fnv(uint64_t h, uint64_t from, uint64_t to)
{
	for (uint64_t i = from; i < to; i++)
		h = (h ^ i) * 0x100000001b3ull;
	return h;
}

int main(void)
{
	const char *ready = getenv("CRH_READY_FILE");
	uint64_t h = fnv(0xcbf29ce484222325ull, 0, 1000000);
	FILE *f = ready ? fopen(ready, "w") : NULL;

	if (f) {
		fprintf(f, "%d\n", (int)getpid());
		fclose(f);
	}
	for (uint64_t round = 1; round <= 30; round++) {
		h = fnv(h, round * 1000000, (round + 1) * 1000000);
		usleep(10000);
	}
	printf("pid %d\nhash %016llx\n", (int)getpid(), (unsigned long long)h);
	return 0;
}
