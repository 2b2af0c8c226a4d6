/*
 * pkeys: memory protection keys across a checkpoint.
 *
 * Allocates keys 1, 2 and 3 and frees 2; tags page A with key 1 and page B
 * with key 3 (pkey_mprotect), writes both, then denies writes through key 1
 * in PKRU and calls pkeys_checkpoint() (the host's breakpoint). After it:
 * a write to A must raise SIGSEGV with si_code SEGV_PKUERR and si_pkey 1, a
 * write to B and a read of A must go through, PKRU must still deny writes
 * for key 1, /proc/self/smaps must show A with key 1 and B with key 3, and
 * the next pkey_alloc must return 2 (the gap). Prints
 *
 *   pkeys a-write=SEGV/4/pkey1 b-write=ok a-read=1 pkru-k1=2 smaps-keys=1,3 next-key=2
 *
 * and exits 0 when all of it holds, 1 otherwise (2: no PKU here).
 *
 * A platform that never raises the protection-key fault (the write faulting
 * again and again, the kernel finding nothing wrong) is caught by a 3 s
 * alarm: the write is then reported as a-write=HANG, and the run exits 3 —
 * the host conditions on it, never waits forever.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096

#define HANG_SECONDS 3

static sigjmp_buf back;
static volatile int fault_code, fault_pkey, hung;

static void on_alarm(int sig)
{
	(void)sig;
	hung = 1;
	siglongjmp(back, 1);
}

static void on_segv(int sig, siginfo_t *info, void *ctx)
{
	(void)sig;
	(void)ctx;
	fault_code = info->si_code;
	fault_pkey = (int)info->si_pkey;
	siglongjmp(back, 1);
}

void __attribute__((noinline)) pkeys_checkpoint(void)
{
	__asm__ volatile("" ::: "memory");
}

static unsigned int rdpkru(void)
{
	unsigned int eax, edx;

	__asm__ volatile("rdpkru" : "=a"(eax), "=d"(edx) : "c"(0));
	return eax;
}

static void wrpkru(unsigned int value)
{
	__asm__ volatile("wrpkru" ::"a"(value), "c"(0), "d"(0) : "memory");
}

/*
 * Writes through p; returns 1 when it faulted (or hung: `hung` says so).
 * The kernel runs a signal handler with the default PKRU and siglongjmp
 * does not give PKRU back: it is put back here, or every later access
 * through a key would fault.
 */
static int faults_on_write(volatile char *p)
{
	unsigned int pkru = rdpkru();

	if (sigsetjmp(back, 1)) {
		alarm(0);
		wrpkru(pkru);
		return 1;
	}
	alarm(HANG_SECONDS);
	*p = 2;
	alarm(0);
	return 0;
}

/* The ProtectionKey smaps shows for the mapping at `at`; -1 when none. */
static int smaps_key(const volatile void *at)
{
	char line[256];
	unsigned long start = 0, end = 0, want = (unsigned long)at;
	char perms[8];
	int key = -1, in = 0;
	FILE *f = fopen("/proc/self/smaps", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof line, f)) {
		/* A VMA's header ("start-end perms ..."); field lines ("Anonymous: ...") convert one number at most. */
		if (sscanf(line, "%lx-%lx %7s", &start, &end, perms) == 3) {
			in = start == want;
			continue;
		}
		if (in && sscanf(line, "ProtectionKey: %d", &key) == 1)
			break;
	}
	fclose(f);
	return in ? key : -1;
}

int main(void)
{
	struct sigaction sa;
	volatile char *a, *b;
	int k1, k2, k3, a_faulted, b_faulted, next, pkru_k1, key_a, key_b, ok;

	k1 = pkey_alloc(0, 0);
	k2 = pkey_alloc(0, 0);
	k3 = pkey_alloc(0, 0);
	if (k1 != 1 || k2 != 2 || k3 != 3) {
		printf("pkeys unavailable: pkey_alloc gave %d %d %d\n", k1, k2, k3);
		return 2;
	}
	pkey_free(k2);
	a = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	b = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (a == MAP_FAILED || b == MAP_FAILED || pkey_mprotect((void *)a, PAGE, PROT_READ | PROT_WRITE, k1) ||
	    pkey_mprotect((void *)b, PAGE, PROT_READ | PROT_WRITE, k3))
		return perror("mmap/pkey_mprotect"), 2;
	a[0] = 1;
	b[0] = 1;
	pkey_set(k1, PKEY_DISABLE_WRITE);

	pkeys_checkpoint();

	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_segv;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGSEGV, &sa, NULL);
	sa.sa_handler = on_alarm;
	sa.sa_flags = 0;
	sigaction(SIGALRM, &sa, NULL);
	key_a = smaps_key(a);
	key_b = smaps_key(b);
	pkru_k1 = pkey_get(k1);
	a_faulted = faults_on_write(a);
	b_faulted = faults_on_write(b);
	next = pkey_alloc(0, 0);
	if (hung)
		printf("pkeys a-write=HANG");
	else if (a_faulted)
		printf("pkeys a-write=SEGV/%d/pkey%d", fault_code, fault_pkey);
	else
		printf("pkeys a-write=ok");
	printf(" b-write=%s a-read=%d pkru-k1=%d smaps-keys=%d,%d next-key=%d\n", b_faulted ? "SEGV" : "ok", a[0], pkru_k1, key_a, key_b,
	       next);
	ok = !b_faulted && a[0] == 1 && pkru_k1 == PKEY_DISABLE_WRITE && key_a == k1 && key_b == k3 && next == k2;
	if (ok && hung)
		return 3;
	return ok && a_faulted && fault_code == SEGV_PKUERR && fault_pkey == k1 ? 0 : 1;
}
