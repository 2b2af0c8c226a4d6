/*
 * uffd: page faults held by a userfaultfd, across a checkpoint.
 *
 *   uffd MODE        MODE: read write movsb movsb-back movsq movsq-back
 *                          stosq stosq-back
 *
 * The main thread is the fault server; a second thread (the worker) makes
 * one access that faults on a page registered with the userfaultfd in
 * MISSING mode, and blocks in the kernel until the server resolves it.
 *
 * The server creates the userfaultfd, registers the one missing page,
 * starts the worker and runs through `uffd_serve_begin` (a nop: a host may
 * stop there to arm a breakpoint in the worker, which waits for `go` so it
 * cannot fault before that). It then reads the fault message, passes it to
 * `uffd_fault_seen` — where the host stops the process for a checkpoint,
 * the worker blocked inside the fault — and resolves it with UFFDIO_COPY of
 * a page whose every byte is a function of its address (server_byte). It
 * joins the worker and checks the result against what the architecture
 * says the access does:
 *
 *   read        movq (missing), %rax         at uffd_load: the served word
 *   write       lock addq $1, (missing)      at uffd_store: served word + 1
 *                                            (the instruction runs once;
 *                                            locked, so that it faults as a
 *                                            write under TCG too, which
 *                                            loads a plain RMW's operand
 *                                            first)
 *   movsb/movsq rep movs of 4 KiB from the middle of a present page into
 *               the missing one (forward; -back: DF=1, from the middle of
 *               a present page down into the missing one below it)
 *   stosq       rep stosq of 4 KiB whose destination runs into the missing
 *               page (a write fault), forward or -back
 *
 * A rep string blocks after exactly 2 KiB, with RCX = what is left and
 * RSI/RDI advanced by 2 KiB; every byte of the destination is checked, so
 * a byte copied twice from a changed source, skipped, or read as zeros
 * instead of the served page shows.
 *
 * Prints "uffd mode=M fault=read|write served=S mismatches=K first=OFF
 * digest=0x..." and exits 0 when the page was served ("copied") and
 * nothing mismatched, 1 otherwise. fault is the kind the message reported,
 * served what became of the one page the server provides (serve_one);
 * first is the offset of the first wrong byte in the destination, -1 when
 * none.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PAGE 4096UL
/* Fixed addresses: an address in the image names one buffer. */
#define SRC ((uint8_t *)0x300000000UL)
#define DST ((uint8_t *)0x300100000UL)
#define ONE ((uint8_t *)0x300200000UL)
#define COPY_BYTES 4096UL
#define STORE_VALUE 0xa5a5c3c3e1e1f0f0UL

enum mode { M_READ, M_WRITE, M_MOVSB, M_MOVSB_BACK, M_MOVSQ, M_MOVSQ_BACK, M_STOSQ, M_STOSQ_BACK };
static const char *const mode_names[] = { "read", "write", "movsb", "movsb-back", "movsq", "movsq-back", "stosq", "stosq-back" };

static enum mode mode;
static int uffd;
static volatile int go;
static uint64_t loaded;
static uint64_t fault_flags;

/* What the server puts in the page it serves, and what the worker put in the present page beside it. */
static uint8_t server_byte(uintptr_t a)
{
	return (uint8_t)((a & 0xfff) * 7 + ((a >> 12) & 0xff) * 13 + 0x5a);
}

static uint8_t present_byte(uintptr_t a)
{
	return (uint8_t)~server_byte(a) ^ 0x33;
}

static void die(const char *what)
{
	printf("uffd mode=%s error: %s: %s\n", mode_names[mode], what, strerror(errno));
	exit(2);
}

static void *map_at(uint8_t *at, size_t len)
{
	void *p = mmap(at, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);

	if (p != at)
		die("mmap");
	return p;
}

static void fill_present(uint8_t *page)
{
	for (uintptr_t i = 0; i < PAGE; i++)
		page[i] = present_byte((uintptr_t)page + i);
}

/* Where a host stops with the worker started and waiting for go. */
__attribute__((noinline)) void uffd_serve_begin(void)
{
	__asm__ volatile("" ::: "memory");
}

/* Where a host stops with the fault read from the userfaultfd and not yet resolved. */
__attribute__((noinline)) void uffd_fault_seen(uint64_t address, uint64_t flags)
{
	__asm__ volatile("" : : "r"(address), "r"(flags) : "memory");
}

/* The one faulting access per mode; the labels name the faulting instruction. */
static void *worker(void *arg)
{
	uint64_t rcx, rsi, rdi;

	(void)arg;
	while (!__atomic_load_n(&go, __ATOMIC_ACQUIRE))
		sched_yield();
	switch (mode) {
	case M_READ:
		__asm__ volatile(".globl uffd_load\nuffd_load:\n\tmovq (%1), %0" : "=r"(loaded) : "r"(ONE + 8) : "memory");
		break;
	case M_WRITE:
		__asm__ volatile(".globl uffd_store\nuffd_store:\n\tlock addq $1, (%0)" : : "r"(ONE + 8) : "memory", "cc");
		break;
	case M_MOVSB:
		rsi = (uint64_t)(SRC + PAGE / 2), rdi = (uint64_t)(DST + PAGE / 2), rcx = COPY_BYTES;
		__asm__ volatile(".globl uffd_rep_movsb\nuffd_rep_movsb:\n\trep movsb" : "+c"(rcx), "+S"(rsi), "+D"(rdi) : : "memory");
		break;
	case M_MOVSB_BACK:
		rsi = (uint64_t)(SRC + PAGE + PAGE / 2 - 1), rdi = (uint64_t)(DST + PAGE + PAGE / 2 - 1), rcx = COPY_BYTES;
		__asm__ volatile("std\n.globl uffd_rep_movsb_back\nuffd_rep_movsb_back:\n\trep movsb\n\tcld" : "+c"(rcx), "+S"(rsi), "+D"(rdi) : : "memory", "cc");
		break;
	case M_MOVSQ:
		rsi = (uint64_t)(SRC + PAGE / 2), rdi = (uint64_t)(DST + PAGE / 2), rcx = COPY_BYTES / 8;
		__asm__ volatile(".globl uffd_rep_movsq\nuffd_rep_movsq:\n\trep movsq" : "+c"(rcx), "+S"(rsi), "+D"(rdi) : : "memory");
		break;
	case M_MOVSQ_BACK:
		rsi = (uint64_t)(SRC + PAGE + PAGE / 2 - 8), rdi = (uint64_t)(DST + PAGE + PAGE / 2 - 8), rcx = COPY_BYTES / 8;
		__asm__ volatile("std\n.globl uffd_rep_movsq_back\nuffd_rep_movsq_back:\n\trep movsq\n\tcld" : "+c"(rcx), "+S"(rsi), "+D"(rdi) : : "memory", "cc");
		break;
	case M_STOSQ:
		rdi = (uint64_t)(DST + PAGE / 2), rcx = COPY_BYTES / 8;
		__asm__ volatile(".globl uffd_rep_stosq\nuffd_rep_stosq:\n\trep stosq" : "+c"(rcx), "+D"(rdi) : "a"(STORE_VALUE) : "memory");
		break;
	case M_STOSQ_BACK:
		rdi = (uint64_t)(DST + PAGE + PAGE / 2 - 8), rcx = COPY_BYTES / 8;
		__asm__ volatile("std\n.globl uffd_rep_stosq_back\nuffd_rep_stosq_back:\n\trep stosq\n\tcld" : "+c"(rcx), "+D"(rdi) : "a"(STORE_VALUE) : "memory", "cc");
		break;
	}
	return NULL;
}

static uint8_t *missing_page(void)
{
	switch (mode) {
	case M_READ:
	case M_WRITE:
		return ONE;
	case M_MOVSB:
	case M_MOVSQ:
		return SRC + PAGE;
	case M_MOVSB_BACK:
	case M_MOVSQ_BACK:
		return SRC;
	case M_STOSQ:
		return DST + PAGE;
	case M_STOSQ_BACK:
		return DST;
	}
	return NULL;
}

static void setup(void)
{
	struct uffdio_api api = { .api = UFFD_API, .features = 0 };
	struct uffdio_register reg;
	uint8_t *missing = missing_page();

	map_at(ONE, PAGE);
	map_at(SRC, 2 * PAGE);
	map_at(DST, 2 * PAGE);
	if (mode != M_READ && mode != M_WRITE && mode != M_STOSQ && mode != M_STOSQ_BACK)
		fill_present(missing == SRC ? SRC + PAGE : SRC);
	uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
	if (uffd < 0)
		die("userfaultfd");
	if (ioctl(uffd, UFFDIO_API, &api))
		die("UFFDIO_API");
	memset(&reg, 0, sizeof reg);
	reg.range.start = (uintptr_t)missing;
	reg.range.len = PAGE;
	reg.mode = UFFDIO_REGISTER_MODE_MISSING;
	if (ioctl(uffd, UFFDIO_REGISTER, &reg))
		die("UFFDIO_REGISTER");
}

/*
 * Reads one fault message and serves its page: "copied" when UFFDIO_COPY
 * placed it, "eexist" when the page was there already, or the errno name
 * of what failed — the worker's result says the rest.
 */
static const char *serve_one(void)
{
	static uint8_t page[PAGE] __attribute__((aligned(4096)));
	struct uffd_msg msg;
	struct uffdio_copy copy;
	uintptr_t at;
	ssize_t n;

	do
		n = read(uffd, &msg, sizeof msg);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return strerrorname_np(errno);
	if (n != sizeof msg || msg.event != UFFD_EVENT_PAGEFAULT)
		return "bad-message";
	fault_flags = msg.arg.pagefault.flags;
	uffd_fault_seen(msg.arg.pagefault.address, msg.arg.pagefault.flags);
	at = msg.arg.pagefault.address & ~(PAGE - 1);
	for (uintptr_t i = 0; i < PAGE; i++)
		page[i] = server_byte(at + i);
	memset(&copy, 0, sizeof copy);
	copy.dst = at;
	copy.src = (uintptr_t)page;
	copy.len = PAGE;
	if (ioctl(uffd, UFFDIO_COPY, &copy) == 0)
		return "copied";
	return errno == EEXIST ? "eexist" : strerrorname_np(errno);
}

/* The byte at `a` after the access, as the architecture defines it. */
static uint8_t expected_byte(uintptr_t a, uint8_t *missing)
{
	uintptr_t lo, hi, src;
	int in_missing = a >= (uintptr_t)missing && a < (uintptr_t)missing + PAGE;

	switch (mode) {
	case M_MOVSB:
	case M_MOVSQ:
		lo = (uintptr_t)DST + PAGE / 2, hi = lo + COPY_BYTES;
		break;
	case M_MOVSB_BACK:
	case M_MOVSQ_BACK:
		hi = (uintptr_t)DST + PAGE + PAGE / 2, lo = hi - COPY_BYTES;
		break;
	case M_STOSQ:
		lo = (uintptr_t)DST + PAGE / 2, hi = lo + COPY_BYTES;
		return a >= lo && a < hi ? (uint8_t)(STORE_VALUE >> (8 * (a & 7))) : in_missing ? server_byte(a) : 0;
	case M_STOSQ_BACK:
		hi = (uintptr_t)DST + PAGE + PAGE / 2, lo = hi - COPY_BYTES;
		return a >= lo && a < hi ? (uint8_t)(STORE_VALUE >> (8 * (a & 7))) : in_missing ? server_byte(a) : 0;
	default:
		return 0;
	}
	if (a < lo || a >= hi)
		return 0;
	src = a - (uintptr_t)DST + (uintptr_t)SRC;
	return src >= (uintptr_t)missing && src < (uintptr_t)missing + PAGE ? server_byte(src) : present_byte(src);
}

int main(int argc, char **argv)
{
	pthread_t thread;
	uint8_t *missing;
	uint64_t digest = 0xcbf29ce484222325ULL, word, expected;
	long mismatches = 0, first = -1;
	const char *served;

	mode = M_READ;
	for (size_t i = 0; argc > 1 && i < sizeof mode_names / sizeof mode_names[0]; i++)
		if (!strcmp(argv[1], mode_names[i]))
			mode = (enum mode)i, argc = -1;
	if (argc != -1) {
		fprintf(stderr, "usage: uffd read|write|movsb|movsb-back|movsq|movsq-back|stosq|stosq-back\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IONBF, 0);
	missing = missing_page();
	setup();
	errno = pthread_create(&thread, NULL, worker, NULL);
	if (errno)
		die("pthread_create");
	uffd_serve_begin();
	__atomic_store_n(&go, 1, __ATOMIC_RELEASE);
	served = serve_one();
	errno = pthread_join(thread, NULL);
	if (errno)
		die("pthread_join");

	if (mode == M_READ || mode == M_WRITE) {
		expected = 0;
		for (int i = 7; i >= 0; i--)
			expected = expected << 8 | server_byte((uintptr_t)ONE + 8 + (uintptr_t)i);
		memcpy(&word, ONE + 8, 8);
		if (mode == M_READ)
			word = loaded;
		else
			expected += 1;
		mismatches = word != expected;
		first = mismatches ? 8 : -1;
		digest = word;
	} else {
		for (uintptr_t i = 0; i < 2 * PAGE; i++) {
			uint8_t got = DST[i];

			if (got != expected_byte((uintptr_t)DST + i, missing)) {
				if (first < 0)
					first = (long)i;
				mismatches++;
			}
			digest = (digest ^ got) * 0x100000001b3ULL;
		}
	}
	printf("uffd mode=%s fault=%s served=%s mismatches=%ld first=%ld digest=0x%016llx\n", mode_names[mode],
	       fault_flags & UFFD_PAGEFAULT_FLAG_WRITE ? "write" : "read", served, mismatches, first, (unsigned long long)digest);
	return mismatches || strcmp(served, "copied") ? 1 : 0;
}
