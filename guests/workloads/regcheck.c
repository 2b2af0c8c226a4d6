/*
 * regcheck: register integrity across a checkpoint.
 *
 *   regcheck
 *
 * Puts a distinct pattern in every general-purpose register but rsp, in
 * xmm0-15 (ymm0-15 with their upper halves when AVX is enabled), in mxcsr
 * (round toward zero, exceptions unmasked differently from the default), in
 * two x87 registers and in EFLAGS.DF (std: the direction flag a `std; rep
 * movs` is checkpointed with), then runs through the label `regcheck_checkpoint`
 * (a nop: the host's breakpoint goes there and the checkpoint is taken at
 * that stop). At `regcheck_resumed` every register is stored and compared
 * with its pattern, fs_base with its value before, DF must still be set
 * (and is cleared right after, as the ABI wants). Prints "regcheck ok" and
 * exits 0, or "regcheck mismatch: <registers>" and exits 1.
 *
 * Callee-saved registers (rbx rbp r12-r15) are where the 2015 entry-code
 * bug showed first; they are checked like every other.
 */
#include <asm/prctl.h>
#include <cpuid.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define NGPR 15

/* Order of the pushes in regcheck_resumed, and of the patterns. */
static const char *const gpr_names[NGPR] = {
	"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8",
	"r9", "r10", "r11", "r12", "r13", "r14", "r15",
};

struct regcheck_state {
	uint64_t gpr[NGPR];
	_Alignas(32) uint8_t vec[16][32];
	uint32_t mxcsr;
	uint32_t pad;
	double x87[2];
	uint64_t rflags;
};

/* The patterns the asm loads, and what it found after the checkpoint label. */
static struct regcheck_state want;
static struct regcheck_state got;

void regcheck_run(struct regcheck_state *out, const struct regcheck_state *in, int avx);

#define GPR_PATTERN(i) (0xc0de000000000000ull | ((uint64_t)(i) << 40) | 0xa5a5a5a5ull * ((i) + 1))

__asm__(".text\n"
	".globl regcheck_run\n"
	".type regcheck_run, @function\n"
	"regcheck_run:\n"
	"	pushq %rbx\n	pushq %rbp\n	pushq %r12\n	pushq %r13\n	pushq %r14\n	pushq %r15\n"
	"	movq %rdi, regcheck_out(%rip)\n"
	"	testl %edx, %edx\n"
	"	jz 1f\n"
	"	vmovdqu 0x080(%rsi), %ymm0\n	vmovdqu 0x0a0(%rsi), %ymm1\n	vmovdqu 0x0c0(%rsi), %ymm2\n	vmovdqu 0x0e0(%rsi), %ymm3\n"
	"	vmovdqu 0x100(%rsi), %ymm4\n	vmovdqu 0x120(%rsi), %ymm5\n	vmovdqu 0x140(%rsi), %ymm6\n	vmovdqu 0x160(%rsi), %ymm7\n"
	"	vmovdqu 0x180(%rsi), %ymm8\n	vmovdqu 0x1a0(%rsi), %ymm9\n	vmovdqu 0x1c0(%rsi), %ymm10\n	vmovdqu 0x1e0(%rsi), %ymm11\n"
	"	vmovdqu 0x200(%rsi), %ymm12\n	vmovdqu 0x220(%rsi), %ymm13\n	vmovdqu 0x240(%rsi), %ymm14\n	vmovdqu 0x260(%rsi), %ymm15\n"
	"	jmp 2f\n"
	"1:\n"
	"	movdqu 0x080(%rsi), %xmm0\n	movdqu 0x0a0(%rsi), %xmm1\n	movdqu 0x0c0(%rsi), %xmm2\n	movdqu 0x0e0(%rsi), %xmm3\n"
	"	movdqu 0x100(%rsi), %xmm4\n	movdqu 0x120(%rsi), %xmm5\n	movdqu 0x140(%rsi), %xmm6\n	movdqu 0x160(%rsi), %xmm7\n"
	"	movdqu 0x180(%rsi), %xmm8\n	movdqu 0x1a0(%rsi), %xmm9\n	movdqu 0x1c0(%rsi), %xmm10\n	movdqu 0x1e0(%rsi), %xmm11\n"
	"	movdqu 0x200(%rsi), %xmm12\n	movdqu 0x220(%rsi), %xmm13\n	movdqu 0x240(%rsi), %xmm14\n	movdqu 0x260(%rsi), %xmm15\n"
	"2:\n"
	"	movl %edx, regcheck_avx(%rip)\n"
	"	ldmxcsr 0x280(%rsi)\n"
	"	fldl 0x288(%rsi)\n"
	"	fldl 0x290(%rsi)\n"
	/* The patterns from in->gpr, rsi (the pointer) last. */
	"	movq 0x00(%rsi), %rax\n	movq 0x08(%rsi), %rbx\n	movq 0x10(%rsi), %rcx\n	movq 0x18(%rsi), %rdx\n"
	"	movq 0x28(%rsi), %rdi\n	movq 0x30(%rsi), %rbp\n	movq 0x38(%rsi), %r8\n	movq 0x40(%rsi), %r9\n"
	"	movq 0x48(%rsi), %r10\n	movq 0x50(%rsi), %r11\n	movq 0x58(%rsi), %r12\n	movq 0x60(%rsi), %r13\n"
	"	movq 0x68(%rsi), %r14\n	movq 0x70(%rsi), %r15\n	movq 0x20(%rsi), %rsi\n"
	"	std\n"
	".globl regcheck_checkpoint\n"
	"regcheck_checkpoint:\n"
	"	nop\n"
	".globl regcheck_resumed\n"
	"regcheck_resumed:\n"
	"	pushq %r15\n	pushq %r14\n	pushq %r13\n	pushq %r12\n	pushq %r11\n	pushq %r10\n	pushq %r9\n	pushq %r8\n"
	"	pushq %rbp\n	pushq %rdi\n	pushq %rsi\n	pushq %rdx\n	pushq %rcx\n	pushq %rbx\n	pushq %rax\n"
	"	movq regcheck_out(%rip), %rax\n"
	"	xorl %ecx, %ecx\n"
	"3:\n"
	"	popq %rdx\n"
	"	movq %rdx, (%rax,%rcx,8)\n"
	"	incl %ecx\n"
	"	cmpl $15, %ecx\n"
	"	jne 3b\n"
	"	pushfq\n"
	"	popq %rdx\n"
	"	movq %rdx, 0x298(%rax)\n"
	"	cld\n"
	"	cmpl $0, regcheck_avx(%rip)\n"
	"	jz 4f\n"
	"	vmovdqu %ymm0, 0x080(%rax)\n	vmovdqu %ymm1, 0x0a0(%rax)\n	vmovdqu %ymm2, 0x0c0(%rax)\n	vmovdqu %ymm3, 0x0e0(%rax)\n"
	"	vmovdqu %ymm4, 0x100(%rax)\n	vmovdqu %ymm5, 0x120(%rax)\n	vmovdqu %ymm6, 0x140(%rax)\n	vmovdqu %ymm7, 0x160(%rax)\n"
	"	vmovdqu %ymm8, 0x180(%rax)\n	vmovdqu %ymm9, 0x1a0(%rax)\n	vmovdqu %ymm10, 0x1c0(%rax)\n	vmovdqu %ymm11, 0x1e0(%rax)\n"
	"	vmovdqu %ymm12, 0x200(%rax)\n	vmovdqu %ymm13, 0x220(%rax)\n	vmovdqu %ymm14, 0x240(%rax)\n	vmovdqu %ymm15, 0x260(%rax)\n"
	"	vzeroupper\n"
	"	jmp 5f\n"
	"4:\n"
	"	movdqu %xmm0, 0x080(%rax)\n	movdqu %xmm1, 0x0a0(%rax)\n	movdqu %xmm2, 0x0c0(%rax)\n	movdqu %xmm3, 0x0e0(%rax)\n"
	"	movdqu %xmm4, 0x100(%rax)\n	movdqu %xmm5, 0x120(%rax)\n	movdqu %xmm6, 0x140(%rax)\n	movdqu %xmm7, 0x160(%rax)\n"
	"	movdqu %xmm8, 0x180(%rax)\n	movdqu %xmm9, 0x1a0(%rax)\n	movdqu %xmm10, 0x1c0(%rax)\n	movdqu %xmm11, 0x1e0(%rax)\n"
	"	movdqu %xmm12, 0x200(%rax)\n	movdqu %xmm13, 0x220(%rax)\n	movdqu %xmm14, 0x240(%rax)\n	movdqu %xmm15, 0x260(%rax)\n"
	"5:\n"
	"	stmxcsr 0x280(%rax)\n"
	"	fstpl 0x290(%rax)\n"
	"	fstpl 0x288(%rax)\n"
	"	ldmxcsr regcheck_default_mxcsr(%rip)\n"
	"	popq %r15\n	popq %r14\n	popq %r13\n	popq %r12\n	popq %rbp\n	popq %rbx\n"
	"	ret\n"
	".size regcheck_run, . - regcheck_run\n");

struct regcheck_state *regcheck_out;
int regcheck_avx;
const uint32_t regcheck_default_mxcsr = 0x1f80;

_Static_assert(offsetof(struct regcheck_state, vec) == 0x80, "vec offset");
_Static_assert(offsetof(struct regcheck_state, mxcsr) == 0x280, "mxcsr offset");
_Static_assert(offsetof(struct regcheck_state, x87) == 0x288, "x87 offset");
_Static_assert(offsetof(struct regcheck_state, rflags) == 0x298, "rflags offset");

/* EFLAGS.DF, set by the asm before the checkpoint label. */
#define RFLAGS_DF 0x400ull

static int avx_usable(void)
{
	unsigned a, b, c, d;
	uint32_t xcr0_lo, xcr0_hi;

	if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE) || !(c & bit_AVX))
		return 0;
	__asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
	return (xcr0_lo & 6) == 6;
}

int main(void)
{
	uint64_t fs_before = 0, fs_after = 0;
	char bad[256] = "";
	int avx = avx_usable();

	for (int i = 0; i < NGPR; i++)
		want.gpr[i] = GPR_PATTERN(i);
	for (int r = 0; r < 16; r++)
		for (int b = 0; b < 32; b++)
			want.vec[r][b] = (uint8_t)(0x40 + r * 7 + b * 3);
	if (!avx)
		for (int r = 0; r < 16; r++)
			memset(want.vec[r] + 16, 0, 16);
	want.mxcsr = 0x7f80 | 0x0100; /* round toward zero, all exceptions masked, DAZ */
	want.x87[0] = 3.14159265358979;
	want.x87[1] = -2.718281828459045;

	syscall(SYS_arch_prctl, ARCH_GET_FS, &fs_before);
	regcheck_run(&got, &want, avx);
	syscall(SYS_arch_prctl, ARCH_GET_FS, &fs_after);

	for (int i = 0; i < NGPR; i++)
		if (got.gpr[i] != want.gpr[i])
			snprintf(bad + strlen(bad), sizeof bad - strlen(bad), " %s", gpr_names[i]);
	for (int r = 0; r < 16; r++)
		if (memcmp(got.vec[r], want.vec[r], avx ? 32 : 16))
			snprintf(bad + strlen(bad), sizeof bad - strlen(bad), " %s%d", avx ? "ymm" : "xmm", r);
	if (got.mxcsr != want.mxcsr)
		snprintf(bad + strlen(bad), sizeof bad - strlen(bad), " mxcsr");
	if (memcmp(got.x87, want.x87, sizeof want.x87))
		snprintf(bad + strlen(bad), sizeof bad - strlen(bad), " x87");
	if (fs_after != fs_before)
		snprintf(bad + strlen(bad), sizeof bad - strlen(bad), " fs_base");
	if (!(got.rflags & RFLAGS_DF))
		snprintf(bad + strlen(bad), sizeof bad - strlen(bad), " df");
	if (bad[0]) {
		printf("regcheck mismatch:%s\n", bad);
		return 1;
	}
	printf("regcheck ok (%s)\n", avx ? "gpr ymm mxcsr x87 fs_base df" : "gpr xmm mxcsr x87 fs_base df");
	return 0;
}
