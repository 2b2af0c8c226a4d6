/*
 * zdtm-spin: a ZDTM-protocol test (protocol.h) that computes until SIGTERM.
 *
 *   zdtm-spin --pidfile=T.pid --outfile=T.out
 *
 * Spins in a loop that keeps an integer counter, a double (SSE) and a long
 * double (x87) counting in step, plus a running sum the loop checks against
 * the closed form, every iteration: a restore that loses or mixes up
 * integer, SSE or x87 state makes them disagree. On SIGTERM it prints how
 * many iterations ran and PASS, or FAIL with the iteration where the
 * counters parted.
 */
#define _GNU_SOURCE
#include "protocol.h"

#include <stdint.h>

int main(int argc, char **argv)
{
	uint64_t n = 0, sum = 0;
	double d = 0.0;
	long double x = 0.0L;

	zp_init(argc, argv);
	zp_daemon();
	zp_msg("spinning until SIGTERM");
	while (zp_go()) {
		n++;
		d += 1.0;
		x += 1.0L;
		sum += n;
		/* Exact below 2^53: a loop would need years under TCG to leave that. */
		if ((uint64_t)d != n || (uint64_t)x != n || sum != n * (n + 1) / 2) {
			zp_fail("at iteration %llu: double %.1f, long double %.1Lf, sum %llu", (unsigned long long)n, d, x, (unsigned long long)sum);
			return 1;
		}
	}
	if (n == 0) {
		zp_fail("never ran");
		return 1;
	}
	zp_msg("%llu iterations", (unsigned long long)n);
	zp_pass();
	return 0;
}
