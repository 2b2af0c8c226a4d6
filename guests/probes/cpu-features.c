/*
 * cpu-features: what the CPU reports and what the kernel enabled, for the
 * platform profile. Prints one "name=value" per line:
 *
 *   cpuid.fsgsbase=0|1   CPUID.(EAX=7,ECX=0):EBX bit 0
 *   hwcap2.fsgsbase=0|1  AT_HWCAP2 bit 1 (HWCAP2_FSGSBASE): the kernel lets user mode run WRFSBASE/WRGSBASE
 *   cpuid.pku=0|1        CPUID.(EAX=7,ECX=0):ECX bit 3
 *   cpuid.ospke=0|1      CPUID.(EAX=7,ECX=0):ECX bit 4: the kernel set CR4.PKE
 *   pkey_alloc=N|-ERRNO  a first pkey_alloc(0, 0) in a fresh process (freed again)
 *   rseq.feature_size=N|absent  getauxval(AT_RSEQ_FEATURE_SIZE), 6.3 and later
 *   rseq.align=N|absent         getauxval(AT_RSEQ_ALIGN), 6.3 and later
 *   timens=0|1           /proc/self/ns/time exists: the kernel has time namespaces (CONFIG_TIME_NS),
 *                        which a restore in another boot needs to continue the process's clocks
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <errno.h>
#include <stdio.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef AT_RSEQ_FEATURE_SIZE
#define AT_RSEQ_FEATURE_SIZE 27
#endif
#ifndef AT_RSEQ_ALIGN
#define AT_RSEQ_ALIGN 28
#endif
#define HWCAP2_FSGSBASE (1UL << 1)

static void auxv(const char *name, unsigned long type)
{
	unsigned long value;

	errno = 0;
	value = getauxval(type);
	if (value == 0 && errno == ENOENT)
		printf("%s=absent\n", name);
	else
		printf("%s=%lu\n", name, value);
}

int main(void)
{
	unsigned int a = 0, b = 0, c = 0, d = 0;
	long key;

	if (__get_cpuid_max(0, NULL) >= 7)
		__cpuid_count(7, 0, a, b, c, d);
	printf("cpuid.fsgsbase=%u\n", b & 1);
	printf("hwcap2.fsgsbase=%d\n", (getauxval(AT_HWCAP2) & HWCAP2_FSGSBASE) != 0);
	printf("cpuid.pku=%u\n", (c >> 3) & 1);
	printf("cpuid.ospke=%u\n", (c >> 4) & 1);
	key = syscall(SYS_pkey_alloc, 0UL, 0UL);
	if (key < 0)
		printf("pkey_alloc=-%d\n", errno);
	else {
		printf("pkey_alloc=%ld\n", key);
		syscall(SYS_pkey_free, key);
	}
	auxv("rseq.feature_size", AT_RSEQ_FEATURE_SIZE);
	auxv("rseq.align", AT_RSEQ_ALIGN);
	printf("timens=%d\n", access("/proc/self/ns/time", F_OK) == 0);
	return 0;
}
