/*
 * soak.c: a long run that checks its own state, for chains of checkpoints
 * (crh repro --cycles N). It mixes a state of four words held in
 * callee-saved registers (live across the call to checkpoint_here() every
 * round) and, in step, the same state in memory (volatile: it never lives in
 * a register). Each round ends by comparing the two: a restore that loses a
 * register, or memory, makes the program say in which round the copies
 * parted and exit 1. The last lines are the pid and a checksum of the state.
 *
 *   crh repro examples/repro/soak.c --checkpoint-at checkpoint_here --cycles 3 -- 50
 *   crh repro examples/repro/soak.c --checkpoint-after 25 --cycles 200 -- 2000
 *
 * Arguments: rounds (default 400) and steps per round (default 20000).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* noipa: the compiler must assume the call clobbers every caller-saved register. */
__attribute__((noipa)) void checkpoint_here(unsigned round) { (void)round; }

static volatile uint64_t shadow[4];

#define MIX(a, b, c, d)                                   \
	do {                                              \
		(a) += (b) ^ ((c) >> 7);                  \
		(b) = ((b) << 13 | (b) >> 51) + (d);      \
		(c) ^= (a) * 0xff51afd7ed558ccdull;       \
		(d) += (c) | 1;                           \
	} while (0)

int main(int argc, char **argv)
{
	unsigned rounds = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : 400;
	unsigned steps = argc > 2 ? (unsigned)strtoul(argv[2], NULL, 10) : 20000;
	uint64_t a = 0x9e3779b97f4a7c15ull, b = 0xbf58476d1ce4e5b9ull, c = 0x94d049bb133111ebull, d = 1;

	shadow[0] = a, shadow[1] = b, shadow[2] = c, shadow[3] = d;
	for (unsigned r = 0; r < rounds; r++) {
		checkpoint_here(r);
		for (unsigned i = 0; i < steps; i++) {
			MIX(a, b, c, d);
			uint64_t sa = shadow[0], sb = shadow[1], sc = shadow[2], sd = shadow[3];
			MIX(sa, sb, sc, sd);
			shadow[0] = sa, shadow[1] = sb, shadow[2] = sc, shadow[3] = sd;
		}
		if (a != shadow[0] || b != shadow[1] || c != shadow[2] || d != shadow[3]) {
			printf("pid %d\nstate diverged in round %u of %u\n", (int)getpid(), r, rounds);
			return 1;
		}
	}
	printf("pid %d\nrounds %u\nchecksum %016llx\n", (int)getpid(), rounds, (unsigned long long)(a ^ b ^ c ^ d));
	return 0;
}
