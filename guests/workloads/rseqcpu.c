/*
 * rseqcpu: the rseq area's cpu_id after a checkpoint.
 *
 * Uses the C library's rseq registration (glibc 2.35+ registers every
 * thread; __rseq_offset from the thread pointer). Writes a stale value
 * (0xdead) into cpu_id_start and cpu_id — the kernel writes them only on a
 * return to user mode after an rseq event — and calls rseq_checkpoint()
 * (the host's breakpoint). After it, writes the stale value again (the
 * checkpoint's own injected calls return to user mode, and the kernel
 * refreshed the area then: what the image holds is current), raises
 * SIGUSR1 (a signal delivery is an rseq event) and reads the area back
 * against getcpu(2) — current only if the area is still registered:
 *
 *   rseqcpu registered=1 cpu_id=current cpu_id_start=current mm_cid=n/a
 *
 * mm_cid (6.3+: AT_RSEQ_FEATURE_SIZE covers it) is made stale too before
 * the signal and is "ok" when the kernel rewrote it below the number of
 * CPUs, "stale" when nothing rewrote it (a kernel that does not maintain it,
 * though the auxv the process read said it would), "n/a" where the auxv
 * says the kernel has none. Exits 0 when all of it holds, 1 otherwise.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef AT_RSEQ_FEATURE_SIZE
#define AT_RSEQ_FEATURE_SIZE 27
#endif
#define STALE 0xdeadU
/* struct rseq: cpu_id_start 0, cpu_id 4, rseq_cs 8, flags 16, node_id 20, mm_cid 24 (6.3+) */
#define MM_CID_OFFSET 24

static void on_usr1(int sig)
{
	(void)sig;
}

void __attribute__((noinline)) rseq_checkpoint(void)
{
	__asm__ volatile("" ::: "memory");
}

int main(void)
{
	volatile struct rseq *rs;
	struct sigaction sa;
	unsigned int cpu = 0, id, start;
	unsigned long feature_size = getauxval(AT_RSEQ_FEATURE_SIZE);
	const char *mm_cid = "n/a";
	int registered = __rseq_size > 0, ok;

	if (!registered) {
		printf("rseqcpu registered=0\n");
		return 1;
	}
	rs = (volatile struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);

	rs->cpu_id_start = STALE;
	rs->cpu_id = STALE;
	rseq_checkpoint();
	rs->cpu_id_start = STALE;
	rs->cpu_id = STALE;
	if (feature_size >= MM_CID_OFFSET + 4)
		*(volatile uint32_t *)((volatile char *)rs + MM_CID_OFFSET) = STALE;
	raise(SIGUSR1);

	id = rs->cpu_id;
	start = rs->cpu_id_start;
	syscall(SYS_getcpu, &cpu, NULL, NULL);
	if (feature_size >= MM_CID_OFFSET + 4) {
		uint32_t cid = *(volatile uint32_t *)((volatile char *)rs + MM_CID_OFFSET);

		mm_cid = cid == STALE ? "stale" : cid < (uint32_t)sysconf(_SC_NPROCESSORS_CONF) ? "ok" : "bad";
	}
	printf("rseqcpu registered=1 cpu_id=%s cpu_id_start=%s mm_cid=%s\n", id == cpu ? "current" : id == STALE ? "stale" : "other",
	       start == cpu ? "current" : start == STALE ? "stale" : "other", mm_cid);
	ok = id == cpu && start == cpu && strcmp(mm_cid, "bad") != 0 && strcmp(mm_cid, "stale") != 0;
	return ok ? 0 : 1;
}
