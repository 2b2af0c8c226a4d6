/*
 * rseqcs: a workload for rseq cases.
 *
 *   rseqcs glibc|own [ITERATIONS] [DESC_FLAGS] [LONG_SPIN]
 *
 * Increments a per-CPU counter ITERATIONS times (default 64), each time in
 * an rseq critical section (cs_increment below) that retries after an abort.
 * `glibc` uses the registration the C library made at start-up; `own`
 * registers its own area (run it with GLIBC_TUNABLES=glibc.pthread.rseq=0).
 * DESC_FLAGS goes into the rseq_cs descriptor's flags (the deprecated
 * RSEQ_CS_FLAG_NO_RESTART_ON_* bits are 1, 2, 4).
 *
 * LONG_SPIN > 0 makes the first increment a long section: it spins
 * LONG_SPIN times between start_ip and the commit (the same code, rcx =
 * LONG_SPIN), so that a tracer interrupting the process after a while, with
 * no breakpoint anywhere, finds it inside the section. It starts 100 ms
 * after rseq_outside(0) (see settle() for why not at once). A retry after an
 * abort spins the usual short count, so the long section aborts at most
 * once, whatever preempts it: its own count is printed on a line of its own
 * before the summary,
 *
 *   rseqcs long spin=L aborts=A
 *
 * At the end it re-registers the same area (the kernel must answer EBUSY
 * when it is still registered) and prints
 *
 *   rseqcs later-aborts=K
 *   rseqcs mode=M iterations=N sum=S aborts=A reregister=EBUSY|0|E<errno>
 *
 * A counts the aborts of the first increment, the one a checkpoint at the
 * first hit of any label interrupts; K those of the others, which only a
 * preemption or migration inside one of them causes (a busy host makes
 * them likely over many iterations, and no restore decides them).
 *
 * and exits 0 when S == N (no increment lost or doubled: the per-CPU
 * invariant) and the area is still registered.
 *
 * The host stops it with an execute breakpoint on one of the global labels
 * of cs_increment — rseq_armed (rseq_cs set, IP not yet in the section),
 * rseq_start (start_ip), rseq_inside, rseq_post_commit (start_ip +
 * post_commit_offset, just outside: the bound is exclusive) — or on
 * rseq_outside, a function called between sections.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* struct rseq, struct rseq_cs and RSEQ_SIG (glibc's x86 signature, the 4
 * bytes before an abort handler) come from <sys/rseq.h>. */
#define MAX_CPUS 256
#define SETTLE_SLEEP_MS 50
#define SETTLE_SPIN_MS 50

static struct rseq own_area;
static struct rseq_cs desc;
static uint64_t counters[MAX_CPUS];
/* The abort handler's count; volatile: it changes behind the compiler's back. */
static volatile uint64_t aborts, later_aborts;

/*
 * Returns 0 when the increment committed, 1 when the kernel aborted the
 * section. rdi = area, rsi = counters, rdx = descriptor, rcx = spin count
 * (>= 1: a longer section).
 */
int cs_increment(struct rseq *a, uint64_t *c, const struct rseq_cs *d, uint64_t spin);
__asm__(".text\n"
	".globl cs_increment\n"
	".type cs_increment, @function\n"
	"cs_increment:\n"
	"	movq %rdx, 8(%rdi)\n"
	".globl rseq_armed\n"
	"rseq_armed:\n"
	"	nop\n"
	".globl rseq_start\n"
	"rseq_start:\n"
	"	movl 4(%rdi), %eax\n"
	"	movq (%rsi,%rax,8), %r8\n"
	"1:	decq %rcx\n"
	"	jnz 1b\n"
	".globl rseq_inside\n"
	"rseq_inside:\n"
	"	addq $1, %r8\n"
	"	movq %r8, (%rsi,%rax,8)\n"
	".globl rseq_post_commit\n"
	"rseq_post_commit:\n"
	"	xorl %eax, %eax\n"
	"	ret\n"
	/* ud1 with the signature as displacement: the kernel checks it at abort_ip - 4. */
	"	.byte 0x0f, 0xb9, 0x3d\n"
	"	.long 0x53053053\n"
	".globl rseq_abort\n"
	"rseq_abort:\n"
	"	movl $1, %eax\n"
	"	ret\n"
	".size cs_increment, . - cs_increment\n");

extern const char rseq_start[], rseq_post_commit[], rseq_abort[];

/* A call the host can break on between sections. */
__attribute__((noinline, noclone, used)) void rseq_outside(uint64_t i)
{
	__asm__ volatile("" : : "r"(i) : "memory");
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/*
 * Before the long section, outside any section: sleep, so that whatever was
 * runnable (the tracer that just continued this process, above all) runs
 * and goes back to sleep; then spin, so that the deferrable timers that
 * waited for the idle CPU to wake up (vmstat's kworker) fire now rather than
 * a moment into the section. Each would preempt the section: an abort.
 * (On the 1-vCPU TCG guest, without the sleep every long section aborted
 * within a few ms; with the sleep alone, a third aborted at once.)
 */
static void settle(void)
{
	struct timespec ts = { 0, SETTLE_SLEEP_MS * 1000000L };
	uint64_t until;

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
	for (until = now_ms() + SETTLE_SPIN_MS; now_ms() < until;)
		;
}

static long sys_rseq(void *area, uint32_t len, int flags, uint32_t sig)
{
	return syscall(SYS_rseq, area, len, flags, sig);
}

int main(int argc, char **argv)
{
	struct rseq *a;
	uint64_t n = 64, sum = 0, i, long_spin = 0, long_aborts = 0;
	int is_long;
	const char *mode;
	char rereg[32];
	long r;

	if (argc < 2 || argc > 5 || (strcmp(argv[1], "glibc") && strcmp(argv[1], "own"))) {
		fprintf(stderr, "usage: rseqcs glibc|own [ITERATIONS] [DESC_FLAGS] [LONG_SPIN]\n");
		return 2;
	}
	mode = argv[1];
	if (argc > 2)
		n = strtoull(argv[2], NULL, 0);
	if (argc > 4)
		long_spin = strtoull(argv[4], NULL, 0);
	desc.version = 0;
	desc.flags = argc > 3 ? (uint32_t)strtoul(argv[3], NULL, 0) : 0;
	desc.start_ip = (uintptr_t)rseq_start;
	desc.post_commit_offset = (uintptr_t)rseq_post_commit - (uintptr_t)rseq_start;
	desc.abort_ip = (uintptr_t)rseq_abort;

	if (!strcmp(mode, "glibc")) {
		if (__rseq_size == 0) {
			fprintf(stderr, "rseqcs: the C library did not register rseq (GLIBC_TUNABLES?)\n");
			return 2;
		}
		a = (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
	} else {
		if (__rseq_size != 0) {
			fprintf(stderr, "rseqcs: the C library registered rseq; run with GLIBC_TUNABLES=glibc.pthread.rseq=0\n");
			return 2;
		}
		a = &own_area;
		if (sys_rseq(a, sizeof *a, 0, RSEQ_SIG) != 0) {
			fprintf(stderr, "rseqcs: rseq registration: %s\n", strerror(errno));
			return 2;
		}
	}

	for (i = 0; i < n; i++) {
		rseq_outside(i);
		is_long = i == 0 && long_spin;
		if (is_long)
			settle();
		while (cs_increment(a, counters, &desc, is_long ? long_spin : 16 + (i & 15))) {
			if (i == 0)
				aborts++;
			else
				later_aborts++;
			long_aborts += is_long;
			is_long = 0;
		}
	}
	for (i = 0; i < MAX_CPUS; i++)
		sum += counters[i];

	r = sys_rseq(a, sizeof *a, 0, RSEQ_SIG);
	if (r == 0)
		snprintf(rereg, sizeof rereg, "0");
	else if (errno == EBUSY)
		snprintf(rereg, sizeof rereg, "EBUSY");
	else
		snprintf(rereg, sizeof rereg, "E%d", errno);
	if (long_spin)
		printf("rseqcs long spin=%llu aborts=%llu\n", (unsigned long long)long_spin, (unsigned long long)long_aborts);
	printf("rseqcs later-aborts=%llu\n", (unsigned long long)later_aborts);
	printf("rseqcs mode=%s iterations=%llu sum=%llu aborts=%llu reregister=%s\n", mode, (unsigned long long)n,
	       (unsigned long long)sum, (unsigned long long)aborts, rereg);
	return sum == n && r != 0 && errno == EBUSY ? 0 : 1;
}
