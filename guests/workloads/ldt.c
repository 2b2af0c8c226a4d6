/*
 * ldt: a process's own LDT across a checkpoint.
 *
 *   ldt
 *
 * Installs two entries with modify_ldt(0x11): entry 3, a present 32-bit
 * read-write data segment whose base is `segment` (below), and entry 5, a
 * data segment marked not present. It loads entry 3's selector into %gs (not
 * %fs: glibc's TLS lives at the FS base) and reads through it, then calls
 * ldt_checkpoint() — the host checkpoints there, with %gs holding an LDT
 * selector. Afterwards it reports, in one line:
 *   - gs: the %gs selector it finds (the kernel loads a null selector instead
 *     of one whose descriptor is missing);
 *   - live: 8 bytes read through %gs as it stands;
 *   - reload: 8 bytes read after loading entry 3's selector into %gs again;
 *   - absent: what loading entry 5's selector does — a not-present segment
 *     raises #NP, which Linux delivers as SIGBUS; a selector past the end of
 *     the LDT (or with no LDT at all) raises #GP, delivered as SIGSEGV; both
 *     with si_code SI_KERNEL (128);
 *   - ldt: the raw descriptors of entries 3 and 5 as modify_ldt(0) reads them.
 * A fault is caught (sigsetjmp/siglongjmp) and printed as SIGNAME/si_code.
 *
 * Prints "ldt ok ..." and exits 0 when entry 3 reads `segment` both ways and
 * entry 5 raises SIGBUS, or "ldt mismatch ..." and exits 1.
 */
#define _GNU_SOURCE
#include <asm/ldt.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define DATA_ENTRY 3
#define ABSENT_ENTRY 5
/* index << 3 | TI (the LDT) | RPL 3 */
#define SELECTOR(entry) ((uint16_t)((entry) << 3 | 4 | 3))

/* What the data segment's base points at: 24 bytes, three distinct words. */
static uint64_t segment[3] = { 0x1dd7da7a00000001ULL, 0x1dd7da7a00000002ULL, 0x1dd7da7a00000003ULL };
static char absent_target[64];

static sigjmp_buf recover;
static volatile sig_atomic_t fault_signo, fault_code;

static void on_fault(int signo, siginfo_t *info, void *ucontext)
{
	(void)ucontext;
	fault_signo = signo;
	fault_code = info->si_code;
	siglongjmp(recover, 1);
}

/* The host's breakpoint goes here. */
__attribute__((noipa, used)) void ldt_checkpoint(void)
{
	__asm__ volatile("nop" ::: "memory");
}

static int install(int entry, uintptr_t base, unsigned limit, int not_present)
{
	struct user_desc d;
	memset(&d, 0, sizeof d);
	d.entry_number = entry;
	d.base_addr = (unsigned)base;
	d.limit = limit;
	d.seg_32bit = 1;
	d.contents = 0; /* data, expand-up */
	d.read_exec_only = 0;
	d.limit_in_pages = 0;
	d.seg_not_present = not_present;
	d.useable = 1;
	return (int)syscall(SYS_modify_ldt, 0x11, &d, sizeof d);
}

static void describe_fault(char *out, size_t size)
{
	snprintf(out, size, "%s/%d", fault_signo == SIGBUS ? "SIGBUS" : fault_signo == SIGSEGV ? "SIGSEGV" : "other", (int)fault_code);
}

/* 8 bytes at %gs:offset, or the fault it raised. */
__attribute__((noipa)) static int read_gs(unsigned offset, uint64_t *value)
{
	if (sigsetjmp(recover, 1))
		return -1;
	uint64_t v;
	__asm__ volatile("movq %%gs:(%1), %0" : "=r"(v) : "r"((uintptr_t)offset) : "memory");
	*value = v;
	return 0;
}

/* Loads `selector` into %gs; 0, or -1 with the fault recorded. */
__attribute__((noipa)) static int load_gs(uint16_t selector)
{
	if (sigsetjmp(recover, 1))
		return -1;
	__asm__ volatile("movw %0, %%gs" : : "r"(selector) : "memory");
	return 0;
}

static uint16_t gs_now(void)
{
	uint16_t gs;
	__asm__ volatile("movw %%gs, %0" : "=r"(gs));
	return gs;
}

static void describe_read(int rc, uint64_t value, char *out, size_t size)
{
	if (rc == 0)
		snprintf(out, size, "%016llx", (unsigned long long)value);
	else
		describe_fault(out, size);
}

int main(void)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_fault;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);

	if ((uintptr_t)segment > 0xffffffffUL || (uintptr_t)absent_target > 0xffffffffUL) {
		printf("ldt mismatch: setup data above 4 GiB\n");
		return 1;
	}
	if (install(DATA_ENTRY, (uintptr_t)segment, sizeof segment - 1, 0) != 0 || install(ABSENT_ENTRY, (uintptr_t)absent_target, sizeof absent_target - 1, 1) != 0) {
		printf("ldt mismatch: setup modify_ldt\n");
		return 1;
	}
	uint64_t before = 0;
	if (load_gs(SELECTOR(DATA_ENTRY)) != 0 || read_gs(0, &before) != 0 || before != segment[0]) {
		printf("ldt mismatch: setup read through gs\n");
		return 1;
	}

	ldt_checkpoint();

	uint16_t gs = gs_now();
	uint64_t live = 0, reload = 0;
	int live_rc = read_gs(8, &live);
	int reload_rc = load_gs(SELECTOR(DATA_ENTRY)) == 0 ? read_gs(16, &reload) : -1;
	int absent_rc = load_gs(SELECTOR(ABSENT_ENTRY));
	char absent[32] = "loaded";
	if (absent_rc != 0)
		describe_fault(absent, sizeof absent);
	(void)load_gs(0);

	uint64_t raw[ABSENT_ENTRY + 1];
	memset(raw, 0, sizeof raw);
	long got = syscall(SYS_modify_ldt, 0, raw, sizeof raw);

	char live_text[32], reload_text[32];
	describe_read(live_rc, live, live_text, sizeof live_text);
	describe_read(reload_rc, reload, reload_text, sizeof reload_text);
	int ok = gs == SELECTOR(DATA_ENTRY) && live_rc == 0 && live == segment[1] && reload_rc == 0 && reload == segment[2] && absent_rc != 0 && fault_signo == SIGBUS;
	printf("ldt %s gs=0x%x live=%s reload=%s absent=%s ldt-read=%ld ldt[3]=%016llx ldt[5]=%016llx\n", ok ? "ok" : "mismatch", gs, live_text, reload_text, absent, got,
	       (unsigned long long)raw[DATA_ENTRY], (unsigned long long)raw[ABSENT_ENTRY]);
	return ok ? 0 : 1;
}
