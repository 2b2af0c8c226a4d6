/*
 * hwbreak: a workload for hardware-breakpoint cases.
 *
 *   hwbreak [N]   calls target() N times (default 5) and prints
 *                 "checksum=<16 hex digits> calls=<N>"
 *
 * The host puts an execute breakpoint on the global symbol `target`, so
 * every call must really go through that address: no inlining, no cloned
 * copy under another name, no call folded away. The checksum depends on
 * every call's result and on their order, so a restore that skips, repeats
 * or corrupts a call shows up in the output.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/*
 * `target` is a one-byte nop followed by `target_body`, a jump to the real
 * work. The breakpoint sits on `target`; the host's CPU oracle watches
 * `target_body`, where the registers are exactly those the process resumed
 * with (a nop changes nothing) — without putting a gdbstub breakpoint on the
 * guest's own breakpoint address, which QEMU TCG would turn into a #DB that
 * ignores RF.
 */
uint64_t target(uint64_t i);
__asm__(".text\n"
	".globl target\n"
	".type target, @function\n"
	"target:\n"
	"	nop\n"
	".globl target_body\n"
	"target_body:\n"
	"	jmp target_impl\n"
	".size target, . - target\n");

__attribute__((noinline, noclone, used)) uint64_t target_impl(uint64_t i)
{
	uint64_t x;

	/* An opaque side effect: the compiler may neither drop nor merge calls. */
	__asm__ volatile("");
	x = i * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;
	x ^= x >> 31;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 29;
	return x;
}

int main(int argc, char **argv)
{
	uint64_t n = 5, sum = 0;
	char *end;

	if (argc > 2) {
		fprintf(stderr, "usage: hwbreak [N]\n");
		return 2;
	}
	if (argc == 2) {
		errno = 0;
		n = strtoull(argv[1], &end, 10);
		if (errno || end == argv[1] || *end || argv[1][0] == '-') {
			fprintf(stderr, "hwbreak: N must be a non-negative integer, got \"%s\"\n", argv[1]);
			return 2;
		}
	}
	for (uint64_t i = 0; i < n; i++)
		sum = (sum << 7 | sum >> 57) ^ target(i);
	printf("checksum=%016" PRIx64 " calls=%" PRIu64 "\n", sum, n);
	return fflush(stdout) == 0 ? 0 : 1;
}
