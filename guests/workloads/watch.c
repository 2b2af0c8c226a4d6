/*
 * watch: a workload for data-watchpoint cases.
 *
 *   watch WIDTH [ROUNDS]    WIDTH = 1, 2, 4, 8 or upper; ROUNDS defaults to 6
 *
 * Each round stores WIDTH bytes to `watched` (8-byte aligned) and then
 * WIDTH bytes just past it, at watched + WIDTH — outside a WIDTH-byte
 * watchpoint on `watched`, so only the first store may trap. `upper` is
 * for an 8-byte watchpoint: each round stores 4 bytes to its upper half
 * (watched + 4, bytes 4-7) and then 8 bytes just past it, at watched + 8:
 * only a watchpoint that really covers 8 bytes sees the first store. It
 * prints
 *
 *   watch width=W rounds=R value=<hex> neighbour=<hex>
 *
 * (W is `upper` in that mode; value and neighbour are 8 bytes then.)
 *
 * The stores are volatile: each one is a single instruction of exactly that
 * width, none merged or dropped.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Global, so the host can find it by name; 64-byte aligned so no other data shares its line. */
uint8_t watched[16] __attribute__((aligned(64)));

static void store(volatile uint8_t *at, int width, uint64_t v)
{
	switch (width) {
	case 1:
		*(volatile uint8_t *)at = (uint8_t)v;
		break;
	case 2:
		*(volatile uint16_t *)at = (uint16_t)v;
		break;
	case 4:
		*(volatile uint32_t *)at = (uint32_t)v;
		break;
	default:
		*(volatile uint64_t *)at = v;
		break;
	}
}

int main(int argc, char **argv)
{
	int width, upper, rounds = 6, i;
	uint64_t value = 0, neighbour = 0;

	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: watch 1|2|4|8|upper [ROUNDS]\n");
		return 2;
	}
	upper = !strcmp(argv[1], "upper");
	width = upper ? 8 : atoi(argv[1]);
	if (width != 1 && width != 2 && width != 4 && width != 8) {
		fprintf(stderr, "watch: width must be 1, 2, 4, 8 or upper\n");
		return 2;
	}
	if (argc == 3)
		rounds = atoi(argv[2]);
	for (i = 0; i < rounds; i++) {
		if (upper)
			store(watched + 4, 4, 0x55667788u * (uint64_t)(i + 1));
		else
			store(watched, width, 0x1122334455667788ull * (uint64_t)(i + 1));
		store(watched + width, width, 0x99aabbccddeeff00ull ^ (uint64_t)i);
	}
	memcpy(&value, watched, (size_t)width);
	memcpy(&neighbour, watched + width, (size_t)width);
	if (upper)
		printf("watch width=upper rounds=%d value=%llx neighbour=%llx\n", rounds, (unsigned long long)value,
		       (unsigned long long)neighbour);
	else
		printf("watch width=%d rounds=%d value=%llx neighbour=%llx\n", width, rounds, (unsigned long long)value,
		       (unsigned long long)neighbour);
	return 0;
}
