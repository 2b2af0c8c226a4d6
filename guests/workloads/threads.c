/*
 * threads: per-thread state across a checkpoint, four threads.
 *
 *   threads
 *
 * The main thread and three workers (t0-t3) each hold a distinct pattern in
 * rbx rbp r12-r15, ymm0-15 (xmm0-15 without AVX) and mxcsr, each has its own
 * blocked mask and a thread-local value (fs_base), and each has the rseq
 * registration the C library made for it. t1 and t2 spin *inside* an rseq
 * critical section (hold_start .. hold_post_commit) that checks, on every
 * iteration, that its rseq_cs still names the section: the kernel never
 * leaves a running task inside a section with rseq_cs cleared, so finding it
 * cleared ("rseq-lost") means a restorer put the thread back inside without
 * the abort the kernel owed it. t3 spins outside any section. t1 has a
 * SIGUSR1 blocked and pending on its own thread queue (pthread_kill), t2 its
 * own alternate signal stack, t3 holds a robust mutex.
 *
 * Once every worker spins, the main thread runs through the label
 * `threads_checkpoint` (a nop: the host's breakpoint goes there, and the host
 * may set a debug register of its own on t3, whose tid is in `thread_tids`),
 * then sets `release`. Every thread stores its registers and checks them,
 * its mask, its tid and thread-local value, that re-registering its rseq area
 * answers EBUSY and, for t1 and t2, that the section aborted at least once
 * (any stop of the process interrupts them: run it under the host's
 * breakpoint; a run nothing stops may see no abort on an idle SMP machine). t1 takes its pending SIGUSR1 (SI_TKILL), t2
 * reads its alternate stack back. Thread i then writes `watched` i+1 times;
 * t3 exits still holding the robust mutex. The main thread joins every worker
 * (pthread_join needs the kernel to clear and wake each thread's tid word:
 * clear_child_tid) and locks the robust mutex, which must answer EOWNERDEAD
 * (the kernel walks the dead owner's robust list).
 *
 * Prints "threads ok: ..." and exits 0, or "threads mismatch: <items>" and
 * exits 1 (items like t2.vec, t1.rseq-lost, t1.pending, join3, robust).
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NTHREADS 4
#define JOIN_TIMEOUT_S 5
#define WORKER_STACK (128 * 1024)

/* struct rseq, struct rseq_cs and RSEQ_SIG (glibc's x86 signature) come from <sys/rseq.h>. */

/* Layout the asm uses: gprs at 0x00 (rbx rbp r12 r13 r14 r15), mxcsr at 0x30, vectors at 0x40. */
struct regs {
	uint64_t gpr[6];
	uint32_t mxcsr;
	uint32_t pad[3];
	_Alignas(32) uint8_t vec[16][32];
};

/* Field offsets are fixed in the asm below. */
struct hold_args {
	struct regs *out;        /* 0x00 */
	const struct regs *in;   /* 0x08 */
	struct rseq *area;       /* 0x10: NULL = no critical section */
	const struct rseq_cs *desc; /* 0x18 */
	volatile int *release;   /* 0x20 */
	volatile uint64_t *aborts; /* 0x28 */
	volatile int *spinning;  /* 0x30 */
	int avx;                 /* 0x38 */
	int main_thread;         /* 0x3c: run through threads_checkpoint and set release */
};

static const char *const gpr_names[6] = { "rbx", "rbp", "r12", "r13", "r14", "r15" };
/* Each thread its own rounding mode, or flush-to-zero: none is the default 0x1f80. */
static const uint32_t mxcsr_of[NTHREADS] = { 0x3f80, 0x5f80, 0x7f80, 0x9fc0 };

static struct regs want[NTHREADS], got[NTHREADS];
static struct hold_args args[NTHREADS];
static struct rseq_cs desc;
static volatile int release;
static volatile int spinning[NTHREADS];
static volatile uint64_t aborts[NTHREADS];
/* Each thread's tid, for the host (which sets t3's debug register by it). */
volatile pid_t thread_tids[NTHREADS];
/* Written i+1 times by thread i after the release: the host watches it in t3. */
volatile uint64_t watched;
static __thread int my_index = -1;
static char problems[NTHREADS][256];
static pthread_mutex_t robust;
static char altstack_mem[64 * 1024];
static int have_avx;

int hold(struct hold_args *a);
__asm__(".text\n"
	".globl hold\n"
	".type hold, @function\n"
	"hold:\n"
	"	pushq %rbx\n	pushq %rbp\n	pushq %r12\n	pushq %r13\n	pushq %r14\n	pushq %r15\n"
	"	movq %rdi, %r11\n"
	"	movq 0x08(%r11), %rsi\n"
	"	cmpl $0, 0x38(%r11)\n"
	"	jz 1f\n"
	"	vmovdqu 0x040(%rsi), %ymm0\n	vmovdqu 0x060(%rsi), %ymm1\n	vmovdqu 0x080(%rsi), %ymm2\n	vmovdqu 0x0a0(%rsi), %ymm3\n"
	"	vmovdqu 0x0c0(%rsi), %ymm4\n	vmovdqu 0x0e0(%rsi), %ymm5\n	vmovdqu 0x100(%rsi), %ymm6\n	vmovdqu 0x120(%rsi), %ymm7\n"
	"	vmovdqu 0x140(%rsi), %ymm8\n	vmovdqu 0x160(%rsi), %ymm9\n	vmovdqu 0x180(%rsi), %ymm10\n	vmovdqu 0x1a0(%rsi), %ymm11\n"
	"	vmovdqu 0x1c0(%rsi), %ymm12\n	vmovdqu 0x1e0(%rsi), %ymm13\n	vmovdqu 0x200(%rsi), %ymm14\n	vmovdqu 0x220(%rsi), %ymm15\n"
	"	jmp 2f\n"
	"1:\n"
	"	movdqu 0x040(%rsi), %xmm0\n	movdqu 0x060(%rsi), %xmm1\n	movdqu 0x080(%rsi), %xmm2\n	movdqu 0x0a0(%rsi), %xmm3\n"
	"	movdqu 0x0c0(%rsi), %xmm4\n	movdqu 0x0e0(%rsi), %xmm5\n	movdqu 0x100(%rsi), %xmm6\n	movdqu 0x120(%rsi), %xmm7\n"
	"	movdqu 0x140(%rsi), %xmm8\n	movdqu 0x160(%rsi), %xmm9\n	movdqu 0x180(%rsi), %xmm10\n	movdqu 0x1a0(%rsi), %xmm11\n"
	"	movdqu 0x1c0(%rsi), %xmm12\n	movdqu 0x1e0(%rsi), %xmm13\n	movdqu 0x200(%rsi), %xmm14\n	movdqu 0x220(%rsi), %xmm15\n"
	"2:\n"
	"	ldmxcsr 0x30(%rsi)\n"
	"	movq 0x00(%rsi), %rbx\n	movq 0x08(%rsi), %rbp\n	movq 0x10(%rsi), %r12\n"
	"	movq 0x18(%rsi), %r13\n	movq 0x20(%rsi), %r14\n	movq 0x28(%rsi), %r15\n"
	"	movq 0x10(%r11), %rsi\n" /* area */
	"	movq 0x18(%r11), %rdx\n" /* desc */
	"	movq 0x20(%r11), %r8\n"  /* &release */
	"	movq 0x28(%r11), %r9\n"  /* &aborts[i] */
	"	movq 0x30(%r11), %r10\n" /* &spinning[i] */
	"	testq %rsi, %rsi\n"
	"	jnz hold_retry\n"
	"	cmpl $0, 0x3c(%r11)\n"
	"	jnz hold_main\n"
	"	movl $1, (%r10)\n"
	"3:	cmpl $0, (%r8)\n"
	"	je 3b\n"
	"	xorl %eax, %eax\n"
	"	jmp hold_done\n"
	"hold_main:\n"
	".globl threads_checkpoint\n"
	"threads_checkpoint:\n"
	"	nop\n"
	"	movl $1, (%r8)\n"
	"	xorl %eax, %eax\n"
	"	jmp hold_done\n"
	"hold_retry:\n"
	"	movq %rdx, 8(%rsi)\n"
	".globl hold_start\n"
	"hold_start:\n"
	"	movl $1, (%r10)\n"
	".globl hold_spin\n"
	"hold_spin:\n"
	"	cmpq %rdx, 8(%rsi)\n"
	"	jne hold_lost\n"
	"	cmpl $0, (%r8)\n"
	"	je hold_spin\n"
	/* Once more on the way out: a thread put back anywhere in the loop
	 * executes at least one check before it leaves the section. */
	"	cmpq %rdx, 8(%rsi)\n"
	"	jne hold_lost\n"
	".globl hold_post_commit\n"
	"hold_post_commit:\n"
	"	xorl %eax, %eax\n"
	"	jmp hold_done\n"
	/* ud1 with the signature as displacement: the kernel checks it at abort_ip - 4. */
	"	.byte 0x0f, 0xb9, 0x3d\n"
	"	.long 0x53053053\n"
	".globl hold_abort\n"
	"hold_abort:\n"
	"	incq (%r9)\n"
	"	jmp hold_retry\n"
	"hold_lost:\n"
	"	movl $2, %eax\n"
	"hold_done:\n"
	"	movq 0x00(%r11), %rsi\n"
	"	movq %rbx, 0x00(%rsi)\n	movq %rbp, 0x08(%rsi)\n	movq %r12, 0x10(%rsi)\n"
	"	movq %r13, 0x18(%rsi)\n	movq %r14, 0x20(%rsi)\n	movq %r15, 0x28(%rsi)\n"
	"	stmxcsr 0x30(%rsi)\n"
	"	cmpl $0, 0x38(%r11)\n"
	"	jz 4f\n"
	"	vmovdqu %ymm0, 0x040(%rsi)\n	vmovdqu %ymm1, 0x060(%rsi)\n	vmovdqu %ymm2, 0x080(%rsi)\n	vmovdqu %ymm3, 0x0a0(%rsi)\n"
	"	vmovdqu %ymm4, 0x0c0(%rsi)\n	vmovdqu %ymm5, 0x0e0(%rsi)\n	vmovdqu %ymm6, 0x100(%rsi)\n	vmovdqu %ymm7, 0x120(%rsi)\n"
	"	vmovdqu %ymm8, 0x140(%rsi)\n	vmovdqu %ymm9, 0x160(%rsi)\n	vmovdqu %ymm10, 0x180(%rsi)\n	vmovdqu %ymm11, 0x1a0(%rsi)\n"
	"	vmovdqu %ymm12, 0x1c0(%rsi)\n	vmovdqu %ymm13, 0x1e0(%rsi)\n	vmovdqu %ymm14, 0x200(%rsi)\n	vmovdqu %ymm15, 0x220(%rsi)\n"
	"	vzeroupper\n"
	"	jmp 5f\n"
	"4:\n"
	"	movdqu %xmm0, 0x040(%rsi)\n	movdqu %xmm1, 0x060(%rsi)\n	movdqu %xmm2, 0x080(%rsi)\n	movdqu %xmm3, 0x0a0(%rsi)\n"
	"	movdqu %xmm4, 0x0c0(%rsi)\n	movdqu %xmm5, 0x0e0(%rsi)\n	movdqu %xmm6, 0x100(%rsi)\n	movdqu %xmm7, 0x120(%rsi)\n"
	"	movdqu %xmm8, 0x140(%rsi)\n	movdqu %xmm9, 0x160(%rsi)\n	movdqu %xmm10, 0x180(%rsi)\n	movdqu %xmm11, 0x1a0(%rsi)\n"
	"	movdqu %xmm12, 0x1c0(%rsi)\n	movdqu %xmm13, 0x1e0(%rsi)\n	movdqu %xmm14, 0x200(%rsi)\n	movdqu %xmm15, 0x220(%rsi)\n"
	"5:\n"
	/* The caller's rounding mode back: the C code after this uses floating point nowhere, but must not inherit ours. */
	"	pushq $0x1f80\n	ldmxcsr (%rsp)\n	addq $8, %rsp\n"
	"	popq %r15\n	popq %r14\n	popq %r13\n	popq %r12\n	popq %rbp\n	popq %rbx\n"
	"	ret\n"
	".size hold, . - hold\n");

extern const char hold_start[], hold_post_commit[], hold_abort[];

static int has_avx(void)
{
	unsigned a, b, c, d;
	uint32_t xcr0_lo, xcr0_hi;

	if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_AVX) || !(c & bit_OSXSAVE))
		return 0;
	__asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
	return (xcr0_lo & 6) == 6;
}

static struct rseq *my_area(void)
{
	return (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
}

/* Thread i's blocked mask: SIGRTMIN+3+i for everyone, SIGUSR1 for the workers, SIGUSR2 for t2. */
static void mask_of(int i, sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGRTMIN + 3 + i);
	if (i > 0)
		sigaddset(set, SIGUSR1);
	if (i == 2)
		sigaddset(set, SIGUSR2);
}

static void note(int i, const char *what)
{
	size_t n = strlen(problems[i]);

	snprintf(problems[i] + n, sizeof problems[i] - n, " t%d.%s", i, what);
}

static void fill_pattern(int i)
{
	struct regs *w = &want[i];

	for (int r = 0; r < 6; r++)
		w->gpr[r] = 0x7e00000000000000ull | ((uint64_t)i << 48) | ((uint64_t)r << 40) | (0x01010101ull * (uint64_t)(i * 16 + r + 1));
	w->mxcsr = mxcsr_of[i];
	for (int v = 0; v < 16; v++)
		for (int b = 0; b < 32; b++)
			w->vec[v][b] = (uint8_t)(0x40 * i + 0x11 * v + b);
}

/* Everything a thread checks after the release; `status` is what hold() returned. */
static void check_self(int i, int status)
{
	struct regs *w = &want[i], *g = &got[i];
	size_t vbytes = have_avx ? 32 : 16;
	sigset_t mask, expected;
	int bad_gpr = 0, bad_vec = 0;

	for (int r = 0; r < 6; r++)
		if (g->gpr[r] != w->gpr[r]) {
			note(i, gpr_names[r]);
			bad_gpr = 1;
		}
	(void)bad_gpr;
	for (int v = 0; v < 16; v++)
		if (memcmp(g->vec[v], w->vec[v], vbytes))
			bad_vec = 1;
	if (bad_vec)
		note(i, "vec");
	if (g->mxcsr != w->mxcsr)
		note(i, "mxcsr");
	if (status == 2)
		note(i, "rseq-lost");
	if (args[i].area && aborts[i] == 0)
		note(i, "no-abort");
	if (my_index != i)
		note(i, "tls");
	if (gettid() != thread_tids[i])
		note(i, "tid");
	mask_of(i, &expected);
	pthread_sigmask(SIG_BLOCK, NULL, &mask);
	for (int s = 1; s < NSIG; s++)
		if (s != 32 && s != 33 && sigismember(&mask, s) != sigismember(&expected, s)) {
			note(i, "mask");
			break;
		}
	errno = 0;
	if (syscall(SYS_rseq, my_area(), sizeof(struct rseq), 0, RSEQ_SIG) == 0 || errno != EBUSY)
		note(i, "rseq-ebusy");
}

/* t1: the SIGUSR1 on its own queue, sent by pthread_kill from this process, and on no other thread's.
 * (The queued siginfo says SI_TKILL; glibc's sigtimedwait folds that into SI_USER, so si_code is not checked.) */
static void check_pending(int i)
{
	sigset_t pending, usr1;
	struct timespec zero = { 0, 0 };
	siginfo_t info;

	sigpending(&pending);
	if (sigismember(&pending, SIGUSR1) != (i == 1)) {
		note(i, "pending");
		return;
	}
	if (i != 1)
		return;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	if (sigtimedwait(&usr1, &info, &zero) != SIGUSR1 || info.si_pid != getpid())
		note(i, "pending");
}

static void *worker(void *p)
{
	int i = (int)(intptr_t)p;
	sigset_t mask;
	stack_t ss;
	int status;

	my_index = i;
	thread_tids[i] = gettid();
	mask_of(i, &mask);
	pthread_sigmask(SIG_SETMASK, &mask, NULL);
	if (i == 2) {
		ss.ss_sp = altstack_mem;
		ss.ss_size = sizeof altstack_mem;
		ss.ss_flags = 0;
		if (sigaltstack(&ss, NULL) < 0)
			note(i, "altstack-setup");
	}
	if (i == 3 && pthread_mutex_lock(&robust) != 0)
		note(i, "robust-setup");
	args[i] = (struct hold_args){
		.out = &got[i], .in = &want[i], .area = i == 1 || i == 2 ? my_area() : NULL, .desc = &desc,
		.release = &release, .aborts = &aborts[i], .spinning = &spinning[i], .avx = have_avx,
	};
	status = hold(&args[i]);
	check_self(i, status);
	check_pending(i);
	if (i == 2) {
		if (sigaltstack(NULL, &ss) < 0 || ss.ss_sp != altstack_mem || ss.ss_size != sizeof altstack_mem ||
		    ss.ss_flags != 0)
			note(i, "altstack");
	}
	for (int n = 0; n <= i; n++)
		watched = (uint64_t)(i * 16 + n);
	/* t3 ends holding the robust mutex: the kernel must mark it owner-dead. */
	return NULL;
}

int main(void)
{
	pthread_t th[NTHREADS];
	pthread_attr_t attr;
	pthread_mutexattr_t mattr;
	struct timespec deadline;
	char line[NTHREADS * 256 + 64] = "";
	sigset_t mask;
	int status, r;

	setvbuf(stdout, NULL, _IONBF, 0);
	if (__rseq_size == 0) {
		fprintf(stderr, "threads: the C library did not register rseq (GLIBC_TUNABLES?)\n");
		return 2;
	}
	have_avx = has_avx();
	for (int i = 0; i < NTHREADS; i++)
		fill_pattern(i);
	desc.version = 0;
	desc.flags = 0;
	desc.start_ip = (uintptr_t)hold_start;
	desc.post_commit_offset = (uintptr_t)hold_post_commit - (uintptr_t)hold_start;
	desc.abort_ip = (uintptr_t)hold_abort;

	my_index = 0;
	thread_tids[0] = gettid();
	mask_of(0, &mask);
	pthread_sigmask(SIG_SETMASK, &mask, NULL);
	pthread_mutexattr_init(&mattr);
	pthread_mutexattr_setrobust(&mattr, PTHREAD_MUTEX_ROBUST);
	pthread_mutex_init(&robust, &mattr);
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, WORKER_STACK);
	for (int i = 1; i < NTHREADS; i++) {
		r = pthread_create(&th[i], &attr, worker, (void *)(intptr_t)i);
		if (r) {
			fprintf(stderr, "threads: pthread_create: %s\n", strerror(r));
			return 2;
		}
	}
	for (int i = 1; i < NTHREADS; i++)
		while (!spinning[i])
			sched_yield();
	/* t1 blocks SIGUSR1 before it spins: this stays pending on its own queue. */
	pthread_kill(th[1], SIGUSR1);

	args[0] = (struct hold_args){ .out = &got[0], .in = &want[0], .desc = &desc, .release = &release,
				      .aborts = &aborts[0], .spinning = &spinning[0], .avx = have_avx, .main_thread = 1 };
	status = hold(&args[0]);
	check_self(0, status);
	check_pending(0);
	watched = 0;

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += JOIN_TIMEOUT_S;
	for (int i = 1; i < NTHREADS; i++) {
		r = pthread_timedjoin_np(th[i], NULL, &deadline);
		if (r) {
			size_t n = strlen(line);

			snprintf(line + n, sizeof line - n, " join%d", i);
		}
	}
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += 1;
	r = pthread_mutex_timedlock(&robust, &deadline);
	if (r == EOWNERDEAD) {
		pthread_mutex_consistent(&robust);
		pthread_mutex_unlock(&robust);
	} else {
		size_t n = strlen(line);

		snprintf(line + n, sizeof line - n, " robust");
		if (r == 0)
			pthread_mutex_unlock(&robust);
	}
	for (int i = NTHREADS - 1; i >= 0; i--) {
		char merged[sizeof line];

		snprintf(merged, sizeof merged, "%s%s", problems[i], line);
		snprintf(line, sizeof line, "%s", merged);
	}
	if (line[0]) {
		printf("threads mismatch:%s\n", line);
		return 1;
	}
	printf("threads ok: %d threads, each with its own registers, xstate (%s, mxcsr), mask, tid and TLS; rseq "
	       "registered (EBUSY), t1 and t2 aborted out of their sections; t1's own pending SIGUSR1; t2's alternate "
	       "stack; pthread_join; robust mutex EOWNERDEAD\n",
	       NTHREADS, have_avx ? "ymm0-15" : "xmm0-15");
	return 0;
}
