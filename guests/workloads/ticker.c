/*
 * ticker: a daemon that lives on timers, for checkpoints at any moment.
 *
 *   ticker [REAL_US [STALL_MS]]
 *
 * Leads its own session (setsid) with stdin on /dev/null, then arms
 * - ITIMER_REAL every REAL_US microseconds (default 1000): SIGALRM;
 * - ITIMER_VIRTUAL every 3 ms and ITIMER_PROF every 4 ms of CPU time;
 * - POSIX timers: id 0 (CLOCK_MONOTONIC, SIGRTMIN, sigev_value 0x5eed,
 *   every 5 ms), id 1 created and deleted (a gap), id 2 (CLOCK_MONOTONIC,
 *   SIGEV_THREAD_ID to itself, SIGUSR2, sigev_value 0xc0de, every 7 ms);
 * - a timerfd (CLOCK_MONOTONIC, TFD_NONBLOCK|TFD_CLOEXEC) moved to fd 7,
 *   every 2 ms;
 * and spins in ticker_work() — a breakpoint there checkpoints it at any
 * moment — until every timer has fired enough: 400 SIGALRMs, 20 SIGVTALRMs
 * and SIGPROFs, 40 and 30 POSIX timer signals, 100 timerfd expirations. A
 * handler checks si_timerid and si_value of each POSIX timer signal. Then
 * it prints
 *
 *   ticker ids=0,2 session=1 real=ok virtual=ok prof=ok posix0=ok posix2=ok timerfd=ok fd7=timerfd bad=0
 *
 * and exits 0. What it prints does not depend on how many times anything
 * fired, only on each timer still firing. A timer that stops firing (a
 * restore that dropped it) shows within STALL_MS of running (default
 * 3000): the program prints "stalled: NAME at N" and exits 3. (A host
 * under load can leave ITIMER_VIRTUAL, counted in user-mode ticks, without
 * a tick for 3 s while the program runs: the host-kernel test gives more.) Time it spends stopped (a
 * checkpoint) does not count: a jump of more than 200 ms between two
 * looks at the clock restarts every stall watch.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define TIMERFD_AT 7

enum { REAL, VIRTUAL, PROF, POSIX0, POSIX2, TFD, NCOUNTERS };
static const char *const names[NCOUNTERS] = { "real", "virtual", "prof", "posix0", "posix2", "timerfd" };
static const long needed[NCOUNTERS] = { 400, 20, 20, 40, 30, 100 };
static volatile long count[NCOUNTERS];
static volatile long bad;
/* Where ticker_work's result goes: a call whose result nobody reads would be dropped. */
static volatile uint64_t sink;
static timer_t ids[3];

static void on_itimer(int sig)
{
	count[sig == SIGALRM ? REAL : sig == SIGVTALRM ? VIRTUAL : PROF]++;
}

static void on_posix(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	if (sig == SIGRTMIN) {
		if (si->si_code != SI_TIMER || si->si_value.sival_ptr != (void *)0x5eed || si->si_timerid != (int)(intptr_t)ids[0])
			bad++;
		count[POSIX0]++;
	} else {
		if (si->si_code != SI_TIMER || si->si_value.sival_ptr != (void *)0xc0de || si->si_timerid != (int)(intptr_t)ids[2])
			bad++;
		count[POSIX2]++;
	}
}

static long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The checkpoint point: a little arithmetic per call, nothing the output shows. */
__attribute__((noipa)) uint64_t ticker_work(uint64_t x)
{
	for (int i = 0; i < 2000; i++)
		x = x * 6364136223846793005ull + 1442695040888963407ull;
	return x;
}

static int fail(const char *what)
{
	printf("ticker: %s: %s\n", what, strerror(errno));
	return 1;
}

int main(int argc, char **argv)
{
	long real_us = argc > 1 ? strtol(argv[1], NULL, 10) : 1000;
	long stall_ms = argc > 2 ? strtol(argv[2], NULL, 10) : 3000;
	struct sigaction sa;
	struct sigevent ev;
	struct itimerval it;
	struct itimerspec its = { .it_interval = { 0, 2000000 }, .it_value = { 0, 2000000 } };
	long last[NCOUNTERS], stamp[NCOUNTERS], prev;
	uint64_t x = 1, expirations;
	char link[64];
	int fd, session, null;

	session = setsid() == getpid() || getsid(0) == getpid();
	null = open("/dev/null", O_RDONLY);
	if (null < 0 || dup2(null, 0) < 0)
		return fail("stdin");
	close(null);

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_itimer;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGALRM, &sa, NULL);
	sigaction(SIGVTALRM, &sa, NULL);
	sigaction(SIGPROF, &sa, NULL);
	sa.sa_handler = NULL;
	sa.sa_sigaction = on_posix;
	sa.sa_flags = SA_RESTART | SA_SIGINFO;
	sigaction(SIGRTMIN, &sa, NULL);
	sigaction(SIGUSR2, &sa, NULL);

	memset(&ev, 0, sizeof ev);
	ev.sigev_notify = SIGEV_SIGNAL;
	ev.sigev_signo = SIGRTMIN;
	ev.sigev_value.sival_ptr = (void *)0x5eed;
	if (timer_create(CLOCK_MONOTONIC, &ev, &ids[0]) != 0)
		return fail("timer 0");
	ev.sigev_notify = SIGEV_NONE;
	if (timer_create(CLOCK_MONOTONIC, &ev, &ids[1]) != 0 || timer_delete(ids[1]) != 0)
		return fail("timer 1");
	ev.sigev_notify = SIGEV_THREAD_ID;
	ev.sigev_signo = SIGUSR2;
	ev.sigev_value.sival_ptr = (void *)0xc0de;
	ev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
	if (timer_create(CLOCK_MONOTONIC, &ev, &ids[2]) != 0)
		return fail("timer 2");

	fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (fd < 0 || dup3(fd, TIMERFD_AT, O_CLOEXEC) != TIMERFD_AT || close(fd) != 0)
		return fail("timerfd");
	if (timerfd_settime(TIMERFD_AT, 0, &its, NULL) != 0)
		return fail("timerfd_settime");
	its.it_interval.tv_nsec = its.it_value.tv_nsec = 5000000;
	if (timer_settime(ids[0], 0, &its, NULL) != 0)
		return fail("timer_settime 0");
	its.it_interval.tv_nsec = its.it_value.tv_nsec = 7000000;
	if (timer_settime(ids[2], 0, &its, NULL) != 0)
		return fail("timer_settime 2");
	it.it_interval.tv_sec = it.it_value.tv_sec = 0;
	it.it_interval.tv_usec = it.it_value.tv_usec = 3000;
	setitimer(ITIMER_VIRTUAL, &it, NULL);
	it.it_interval.tv_usec = it.it_value.tv_usec = 4000;
	setitimer(ITIMER_PROF, &it, NULL);
	it.it_interval.tv_sec = it.it_value.tv_sec = real_us / 1000000;
	it.it_interval.tv_usec = it.it_value.tv_usec = real_us % 1000000;
	setitimer(ITIMER_REAL, &it, NULL);

	prev = now_ms();
	for (int i = 0; i < NCOUNTERS; i++) {
		last[i] = 0;
		stamp[i] = prev;
	}
	for (;;) {
		int done = 1;
		long t;

		x = ticker_work(x);
		sink = x;
		while (read(TIMERFD_AT, &expirations, sizeof expirations) == sizeof expirations)
			count[TFD] += (long)expirations;
		t = now_ms();
		if (t - prev > 200)
			for (int i = 0; i < NCOUNTERS; i++)
				stamp[i] = t;
		prev = t;
		for (int i = 0; i < NCOUNTERS; i++) {
			if (count[i] != last[i]) {
				last[i] = count[i];
				stamp[i] = t;
			}
			if (count[i] < needed[i]) {
				done = 0;
				if (t - stamp[i] > stall_ms) {
					printf("stalled: %s at %ld\n", names[i], count[i]);
					return 3;
				}
			}
		}
		if (done)
			break;
	}
	memset(&it, 0, sizeof it);
	setitimer(ITIMER_REAL, &it, NULL);
	setitimer(ITIMER_VIRTUAL, &it, NULL);
	setitimer(ITIMER_PROF, &it, NULL);
	snprintf(link, sizeof link, "/proc/self/fd/%d", TIMERFD_AT);
	{
		char target[64] = "";
		ssize_t n = readlink(link, target, sizeof target - 1);

		if (n > 0)
			target[n] = 0;
		printf("ticker ids=%d,%d session=%d", (int)(intptr_t)ids[0], (int)(intptr_t)ids[2], session);
		for (int i = 0; i < NCOUNTERS; i++)
			printf(" %s=ok", names[i]);
		printf(" fd%d=%s bad=%ld\n", TIMERFD_AT, strcmp(target, "anon_inode:[timerfd]") ? target : "timerfd", bad);
	}
	sink = x;
	return 0;
}
