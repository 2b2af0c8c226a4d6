/*
 * zdtm-itimer: a ZDTM-protocol test (protocol.h) living on a 1 ms interval
 * timer.
 *
 *   zdtm-itimer --pidfile=T.pid --outfile=T.out
 *
 * Arms ITIMER_REAL every 1 ms and counts SIGALRMs, each handler call
 * checking that CLOCK_MONOTONIC did not go back since the previous one.
 * Waits in pause() until SIGTERM. Then: the ticks must be plausible — at
 * least one, and no more than the milliseconds since the timer was armed
 * (plus one): a 1 ms timer cannot fire faster, and time spent checkpointed
 * only makes it fire less — and the timer must still be running: 20 more
 * ticks within 2 s. A restore that dropped the timer fails there.
 */
#define _GNU_SOURCE
#include "protocol.h"

#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile long ticks, backwards;
static volatile int64_t last_ns;

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void on_alarm(int sig)
{
	int64_t now = now_ns();

	(void)sig;
	if (now < last_ns)
		backwards++;
	last_ns = now;
	ticks++;
}

int main(int argc, char **argv)
{
	struct itimerval every_ms = { { 0, 1000 }, { 0, 1000 } };
	struct sigaction sa;
	int64_t armed, elapsed_ms, deadline;
	long seen;

	zp_init(argc, argv);
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_alarm;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGALRM, &sa, NULL) < 0) {
		zp_fail("sigaction SIGALRM");
		return 1;
	}
	armed = now_ns();
	last_ns = armed;
	if (setitimer(ITIMER_REAL, &every_ms, NULL) < 0) {
		zp_fail("setitimer");
		return 1;
	}
	zp_daemon();
	zp_msg("ticking until SIGTERM");
	while (zp_go())
		pause();

	seen = ticks;
	elapsed_ms = (now_ns() - armed) / 1000000;
	if (backwards) {
		zp_fail("CLOCK_MONOTONIC went back %ld times between ticks", backwards);
		return 1;
	}
	if (seen < 1 || seen > elapsed_ms + 1) {
		zp_fail("%ld ticks in %lld ms of a 1 ms timer", seen, (long long)elapsed_ms);
		return 1;
	}
	deadline = now_ns() + 2000000000LL;
	/* Short sleeps, not pause(): a stalled timer must not leave it waiting for ever. */
	while (ticks < seen + 20 && now_ns() < deadline)
		usleep(10000);
	if (ticks < seen + 20) {
		zp_fail("the timer stalled: %ld ticks in the 2 s after SIGTERM", ticks - seen);
		return 1;
	}
	zp_msg("ticks plausible and monotonic");
	zp_pass();
	return 0;
}
