/*
 * vdsoclock: calls the vDSO's functions before and after a checkpoint
 * (vdso_checkpoint, the host's breakpoint), for restores onto another
 * kernel, whose vDSO has its functions at other offsets
 * (cases/restore-elsewhere). Static glibc resolved clock_gettime,
 * gettimeofday, time and getcpu in the vDSO at startup and calls through
 * those addresses: a restore that left the new kernel's vDSO as it is sends
 * them into other code. Prints
 *
 *   vdsoclock clock_gettime=ok gettimeofday=ok time=ok getcpu=ok
 *
 * (each call after the checkpoint returned success and a plausible value)
 * and exits 0, 1 otherwise. It prints no clock value: those differ from
 * run to run (and CLOCK_MONOTONIC is the restoring guest's: without a time
 * namespace it does not continue the checkpoint guest's).
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <sys/time.h>
#include <time.h>

void __attribute__((noinline)) vdso_checkpoint(void)
{
	__asm__ volatile("" ::: "memory");
}

int main(void)
{
	struct timespec before, after;
	(void)before;
	struct timeval tv;
	unsigned int cpu = ~0u, node = ~0u;
	int ok = 1;

	setvbuf(stdout, NULL, _IONBF, 0);
	clock_gettime(CLOCK_MONOTONIC, &before);
	vdso_checkpoint();
	int cg = clock_gettime(CLOCK_MONOTONIC, &after) == 0 && after.tv_sec > 0;
	int gt = gettimeofday(&tv, NULL) == 0 && tv.tv_sec > 1000000000;
	time_t now = time(NULL);
	int tm = now > 1000000000;
	int gc = getcpu(&cpu, &node) == 0 && cpu < 4096;
	ok = cg && gt && tm && gc;
	printf("vdsoclock clock_gettime=%s gettimeofday=%s time=%s getcpu=%s\n", cg ? "ok" : "bad", gt ? "ok" : "bad", tm ? "ok" : "bad", gc ? "ok" : "bad");
	return ok ? 0 : 1;
}
