/*
 * monoclock: reads CLOCK_MONOTONIC and CLOCK_BOOTTIME, both through the
 * vDSO (what glibc's clock_gettime calls) and through the system call,
 * before and after monoclock_checkpoint (the host's breakpoint), for a
 * restore in another boot (cases/restore-elsewhere): each clock must go on
 * from where it was, as in an uninterrupted run — never backwards, and never
 * forward by more than BOUND seconds (argv[1], default 20), which a clock
 * that counted the restoring guest's uptime, or the downtime of the move,
 * would. Prints
 *
 *   monoclock monotonic vdso=continuous syscall=continuous boottime vdso=continuous syscall=continuous
 *
 * and exits 0; a clock that went backwards says "backwards", one that
 * jumped says "jumped", and the exit status is 1. No clock value is
 * printed: they differ from run to run.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

void __attribute__((noinline)) monoclock_checkpoint(void)
{
	__asm__ volatile("" ::: "memory");
}

static long long ns_of(struct timespec t)
{
	return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static long long via_syscall(clockid_t clock)
{
	struct timespec t;

	if (syscall(SYS_clock_gettime, clock, &t) != 0)
		return -1;
	return ns_of(t);
}

static long long via_vdso(clockid_t clock)
{
	struct timespec t;

	if (clock_gettime(clock, &t) != 0)
		return -1;
	return ns_of(t);
}

static const char *verdict(long long before, long long after, long long bound_ns, int *ok)
{
	if (before < 0 || after < 0) {
		*ok = 0;
		return "failed";
	}
	if (after < before) {
		*ok = 0;
		return "backwards";
	}
	if (after - before > bound_ns) {
		*ok = 0;
		return "jumped";
	}
	return "continuous";
}

int main(int argc, char **argv)
{
	long long bound_ns = (argc > 1 ? atoll(argv[1]) : 20) * 1000000000LL;
	clockid_t clocks[2] = { CLOCK_MONOTONIC, CLOCK_BOOTTIME };
	long long before[2][2], after[2][2];
	const char *said[2][2];
	int ok = 1;

	setvbuf(stdout, NULL, _IONBF, 0);
	for (int c = 0; c < 2; c++) {
		before[c][0] = via_vdso(clocks[c]);
		before[c][1] = via_syscall(clocks[c]);
	}
	monoclock_checkpoint();
	for (int c = 0; c < 2; c++) {
		after[c][0] = via_vdso(clocks[c]);
		after[c][1] = via_syscall(clocks[c]);
	}
	for (int c = 0; c < 2; c++)
		for (int how = 0; how < 2; how++)
			said[c][how] = verdict(before[c][how], after[c][how], bound_ns, &ok);
	printf("monoclock monotonic vdso=%s syscall=%s boottime vdso=%s syscall=%s\n", said[0][0], said[0][1], said[1][0], said[1][1]);
	return ok ? 0 : 1;
}
