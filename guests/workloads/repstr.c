/*
 * repstr: rep string instructions interrupted mid-iteration.
 *
 *   repstr movsb|movsq|stosq fwd|back [KIB]
 *
 * Runs one long `rep movsb`, `rep movsq` or `rep stosq` (KIB kibibytes,
 * default 4096; `back` with DF=1, from the last element down) at the global
 * label rep_insn, with a one-shot 0.5 ms SIGALRM timer armed just before (the copy is
 * done again, up to 50 times, when the timer misses the instruction). The
 * SIGALRM handler finds the interrupted context at rep_insn with RCX not yet
 * 0 — the instruction stopped after a non-final iteration — records RCX,
 * RSI, RDI and EFLAGS.RF from it, and calls rep_in_handler(), where the host
 * checkpoints. After the instruction completes, the destination is compared
 * with what a plain loop computes, and RCX/RSI/RDI with where the copy must
 * end. Prints
 *
 *   repstr op=O dir=D bytes=N interrupted=1 attempts=A progress=P/N frame-rf=R result=ok
 *
 * (progress: bytes done at the interrupt) and exits 0, or "result=bad ..."
 * and exits 1.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <ucontext.h>

#define EFLAGS_RF (1u << 16)
#define MAX_ATTEMPTS 50

extern const char rep_movsb_insn[], rep_movsq_insn[], rep_stosq_insn[];

static volatile int interrupted, alarmed;
static volatile uint64_t at_rcx, at_rsi, at_rdi, at_rf;
static const char *insn;

__attribute__((noipa, used)) void rep_in_handler(void)
{
	__asm__ volatile("nop" ::: "memory");
}

static void on_alarm(int sig, siginfo_t *si, void *ucv)
{
	ucontext_t *uc = ucv;
	greg_t *g = uc->uc_mcontext.gregs;

	(void)sig;
	(void)si;
	alarmed = 1;
	if ((const char *)g[REG_RIP] != insn || g[REG_RCX] == 0 || interrupted)
		return;
	interrupted = 1;
	/* The context is read after the call, through `g` kept in rbx (a
	 * callee-saved register, which a restore must bring back) — left to
	 * itself the compiler spills it to the stack instead. The call steps
	 * over the red zone the compiler may be using. */
	__asm__ volatile("sub $128, %%rsp\n\tcall rep_in_handler\n\tadd $128, %%rsp"
			 : "+b"(g)
			 :
			 : "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "memory", "cc");
	at_rcx = (uint64_t)g[REG_RCX];
	at_rsi = (uint64_t)g[REG_RSI];
	at_rdi = (uint64_t)g[REG_RDI];
	at_rf = (g[REG_EFL] & EFLAGS_RF) != 0;
}

/* Each returns the final rcx, rsi, rdi through the pointers. */
static void run(const char *op, int back, uint64_t count, void *dst, const void *src, uint64_t fill, uint64_t out[3])
{
	uint64_t c = count, s = (uint64_t)src, d = (uint64_t)dst;

	if (back)
		__asm__ volatile("std" ::: "cc");
	if (!strcmp(op, "movsb"))
		__asm__ volatile(".globl rep_movsb_insn\nrep_movsb_insn:\n\trep movsb" : "+c"(c), "+S"(s), "+D"(d) : : "memory");
	else if (!strcmp(op, "movsq"))
		__asm__ volatile(".globl rep_movsq_insn\nrep_movsq_insn:\n\trep movsq" : "+c"(c), "+S"(s), "+D"(d) : : "memory");
	else
		__asm__ volatile(".globl rep_stosq_insn\nrep_stosq_insn:\n\trep stosq" : "+c"(c), "+D"(d) : "a"(fill) : "memory");
	__asm__ volatile("cld" ::: "cc");
	out[0] = c;
	out[1] = s;
	out[2] = d;
}

int main(int argc, char **argv)
{
	uint64_t bytes, elem, count, out[3], fill = 0x0123456789abcdefull, done;
	uint8_t *src, *dst, *want;
	struct itimerval once = { .it_value = { .tv_usec = 500 } };
	struct sigaction sa;
	int back, ok, attempts;
	const char *op;

	if (argc < 3 || argc > 4 || (strcmp(argv[1], "movsb") && strcmp(argv[1], "movsq") && strcmp(argv[1], "stosq")) ||
	    (strcmp(argv[2], "fwd") && strcmp(argv[2], "back"))) {
		fprintf(stderr, "usage: repstr movsb|movsq|stosq fwd|back [KIB]\n");
		return 2;
	}
	op = argv[1];
	back = !strcmp(argv[2], "back");
	bytes = (argc == 4 ? strtoull(argv[3], NULL, 0) : 4096) << 10;
	elem = !strcmp(op, "movsb") ? 1 : 8;
	count = bytes / elem;
	insn = !strcmp(op, "movsb") ? rep_movsb_insn : !strcmp(op, "movsq") ? rep_movsq_insn : rep_stosq_insn;
	src = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	dst = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	want = malloc(bytes);
	if (src == MAP_FAILED || dst == MAP_FAILED || !want)
		return perror("alloc"), 2;
	for (uint64_t i = 0; i < bytes; i++)
		src[i] = (uint8_t)(i * 131 + (i >> 12));
	memset(dst, 0xee, bytes);
	for (uint64_t i = 0; i < bytes; i += 8)
		if (!strcmp(op, "stosq"))
			memcpy(want + i, &fill, 8);
		else
			memcpy(want + i, src + i, 8);

	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_alarm;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGALRM, &sa, NULL);
	/* The timer must land inside the instruction; on a busy host it may fire
	 * before the copy starts or after it ends: then the copy is done again. */
	for (attempts = 1; attempts <= MAX_ATTEMPTS; attempts++) {
		memset(dst, 0xee, bytes);
		setitimer(ITIMER_REAL, &once, NULL);
		if (back)
			run(op, 1, count, dst + bytes - elem, src + bytes - elem, fill, out);
		else
			run(op, 0, count, dst, src, fill, out);
		if (interrupted)
			break;
		/* Let a timer that has not fired yet fire outside the next attempt. */
		while (!alarmed)
			;
		alarmed = 0;
	}

	ok = memcmp(dst, want, bytes) == 0 && out[0] == 0 &&
	     out[2] == (uint64_t)(back ? dst - elem : dst + bytes) &&
	     (!strcmp(op, "stosq") || out[1] == (uint64_t)(back ? src - elem : src + bytes));
	done = interrupted ? (count - at_rcx) * elem : 0;
	/* Where the interrupt left RSI/RDI must agree with RCX: no element done twice or skipped. */
	if (interrupted)
		ok = ok && at_rdi == (uint64_t)(back ? dst + bytes - elem - done : dst + done);
	printf("repstr op=%s dir=%s bytes=%llu interrupted=%d attempts=%d progress=%llu/%llu frame-rf=%llu result=%s\n", op,
	       argv[2], (unsigned long long)bytes, interrupted, attempts > MAX_ATTEMPTS ? MAX_ATTEMPTS : attempts,
	       (unsigned long long)done, (unsigned long long)bytes, (unsigned long long)at_rf, ok ? "ok" : "bad");
	return ok && interrupted ? 0 : 1;
}
