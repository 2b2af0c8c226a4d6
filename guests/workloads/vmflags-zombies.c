/*
 * vmflags-zombies: two kinds of state a restore used to refuse, one mode each
 * (one binary: one text segment).
 *
 *   vmflags-zombies vmflags PREFIX
 *
 * Maps, at fixed addresses, 2 pages each of private anonymous memory given
 * MADV_DONTFORK, MADV_SEQUENTIAL, MADV_DONTDUMP, MADV_MERGEABLE,
 * MADV_RANDOM, MADV_WIPEONFORK, one mapped MAP_NORESERVE and one locked
 * with mlock — each filled with its own byte — and 1 page of
 * PREFIX.shared mapped MAP_SHARED, PROT_READ, from a descriptor opened
 * O_RDWR (closed again: VmFlags mw without w). It records the VmFlags line
 * of each from /proc/self/smaps, calls vmflags_checkpoint() — the host
 * checkpoints there — and then checks: each VmFlags line is the recorded
 * one, every byte is still there, and mprotect(PROT_WRITE) on the shared
 * file mapping succeeds and a write through it reaches the file.
 * Prints "vmflags ok: 9 mappings" and exits 0, or
 * "vmflags mismatch: <items>" and exits 1.
 *
 *   vmflags-zombies zombies
 *
 * Forks two children that end at once, one with exit(42), one killed by
 * SIGUSR1, waits until both have ended without collecting them (waitid
 * WNOWAIT: zombies), forks a third that stays alive until it reads a byte
 * from a pipe, and calls zombies_checkpoint() — the host checkpoints the
 * tree there. Then it collects every child with waitpid(-1) and prints what
 * each was, in a pid-independent form:
 *   zombies: first exited 42, second killed by signal 10, third exited 0, then ECHILD
 * and exits 0; anything else (a zombie lost: ECHILD early; another status)
 * shows in that line and it exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGE 4096
#define BASE 0x210000000UL
#define STRIDE 0x10000UL

static char mismatches[1024];
static void mismatch(const char *what)
{
	strncat(mismatches, " ", sizeof mismatches - strlen(mismatches) - 1);
	strncat(mismatches, what, sizeof mismatches - strlen(mismatches) - 1);
}

/* The host's breakpoints go here. */
__attribute__((noipa, used)) void vmflags_checkpoint(void)
{
	__asm__ volatile("nop" ::: "memory");
}

__attribute__((noipa, used)) void zombies_checkpoint(void)
{
	__asm__ volatile("nop" ::: "memory");
}

static void die(const char *mode, const char *what)
{
	printf("%s mismatch: setup %s (%s)\n", mode, what, strerror(errno));
	exit(1);
}

/* ------------------------------------------------------------------------ */

struct region {
	const char *name;
	int advice; /* -1: none */
	int extra_flags;
	int lock;
	char flags[256];
};

static struct region regions[] = {
	{ "dontfork", MADV_DONTFORK, 0, 0, "" },   { "sequential", MADV_SEQUENTIAL, 0, 0, "" },
	{ "dontdump", MADV_DONTDUMP, 0, 0, "" },   { "mergeable", MADV_MERGEABLE, 0, 0, "" },
	{ "random", MADV_RANDOM, 0, 0, "" },       { "wipeonfork", MADV_WIPEONFORK, 0, 0, "" },
	{ "noreserve", -1, MAP_NORESERVE, 0, "" }, { "locked", -1, 0, 1, "" },
};
#define NREGIONS (sizeof regions / sizeof regions[0])

/* The VmFlags line of the VMA that starts at `start`, into out ("" when none). */
static void vmflags_of(unsigned long start, char *out, size_t size)
{
	char line[512];
	unsigned long s, e;
	int in = 0;
	FILE *f = fopen("/proc/self/smaps", "re");

	out[0] = 0;
	if (!f)
		die("vmflags", "smaps");
	while (fgets(line, sizeof line, f)) {
		if (sscanf(line, "%lx-%lx ", &s, &e) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			in = s == start;
			continue;
		}
		if (in && !strncmp(line, "VmFlags:", 8)) {
			strncpy(out, line + 8, size - 1);
			out[size - 1] = 0;
			break;
		}
	}
	fclose(f);
}

static int vmflags_mode(const char *prefix)
{
	char path[512], shared_flags[256], now[256];
	unsigned long at;
	size_t i;
	int fd;

	for (i = 0; i < NREGIONS; i++) {
		struct region *r = &regions[i];
		char *p;

		at = BASE + i * STRIDE;
		p = mmap((void *)at, 2 * PAGE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE | r->extra_flags, -1, 0);
		if (p == MAP_FAILED)
			die("vmflags", r->name);
		memset(p, 'a' + (int)i, 2 * PAGE);
		if (r->advice >= 0 && madvise(p, 2 * PAGE, r->advice) < 0)
			die("vmflags", r->name);
		/* mlock, not mlock2(MLOCK_ONFAULT): the 6.1 guest kernel shows VM_LOCKONFAULT as "??" in smaps. */
		if (r->lock && mlock(p, 2 * PAGE) < 0)
			die("vmflags", r->name);
	}
	snprintf(path, sizeof path, "%s.shared", prefix);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || ftruncate(fd, PAGE) < 0)
		die("vmflags", "shared file");
	at = BASE + NREGIONS * STRIDE;
	if (mmap((void *)at, PAGE, PROT_READ, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0) == MAP_FAILED)
		die("vmflags", "shared file mapping");
	close(fd);

	for (i = 0; i < NREGIONS; i++)
		vmflags_of(BASE + i * STRIDE, regions[i].flags, sizeof regions[i].flags);
	vmflags_of(at, shared_flags, sizeof shared_flags);

	vmflags_checkpoint();

	for (i = 0; i < NREGIONS; i++) {
		const char *p = (const char *)(BASE + i * STRIDE);

		vmflags_of(BASE + i * STRIDE, now, sizeof now);
		if (!regions[i].flags[0] || strcmp(now, regions[i].flags))
			mismatch(regions[i].name);
		for (size_t b = 0; b < 2 * PAGE; b++)
			if (p[b] != 'a' + (int)i) {
				mismatch("contents");
				break;
			}
	}
	vmflags_of(at, now, sizeof now);
	if (!shared_flags[0] || strcmp(now, shared_flags))
		mismatch("shared-file-flags");
	if (mprotect((void *)at, PAGE, PROT_READ | PROT_WRITE) < 0) {
		mismatch("shared-file-mprotect-write");
	} else {
		char byte = 0;

		*(volatile char *)at = 'W';
		msync((void *)at, PAGE, MS_SYNC);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0 || pread(fd, &byte, 1, 0) != 1 || byte != 'W')
			mismatch("shared-file-write-not-in-file");
		if (fd >= 0)
			close(fd);
	}
	unlink(path);
	if (mismatches[0]) {
		printf("vmflags mismatch:%s\n", mismatches);
		return 1;
	}
	printf("vmflags ok: %zu mappings\n", NREGIONS + 1);
	return 0;
}

/* ------------------------------------------------------------------------ */

static int zombies_mode(void)
{
	pid_t first, second, third;
	int gate[2];
	siginfo_t si;
	char line[256];
	int bad = 0;

	if (pipe2(gate, O_CLOEXEC) < 0)
		die("zombies", "pipe");
	first = fork();
	if (first == 0)
		_exit(42);
	second = fork();
	if (second == 0) {
		kill(getpid(), SIGUSR1);
		_exit(3);
	}
	if (first < 0 || second < 0)
		die("zombies", "fork");
	/* Ended, not collected: both are zombies from here. */
	if (waitid(P_PID, (id_t)first, &si, WEXITED | WNOWAIT) < 0 || waitid(P_PID, (id_t)second, &si, WEXITED | WNOWAIT) < 0)
		die("zombies", "waitid");
	third = fork();
	if (third == 0) {
		char byte;

		close(gate[1]);
		_exit(read(gate[0], &byte, 1) == 1 ? 0 : 5);
	}
	if (third < 0)
		die("zombies", "fork");
	close(gate[0]);

	zombies_checkpoint();

	if (write(gate[1], "g", 1) != 1)
		die("zombies", "gate");
	close(gate[1]);
	char first_s[64] = "missing", second_s[64] = "missing", third_s[64] = "missing", end_s[64] = "";
	for (;;) {
		int st;
		pid_t r = waitpid(-1, &st, 0);
		char *slot;

		if (r < 0) {
			snprintf(end_s, sizeof end_s, "%s", errno == ECHILD ? "ECHILD" : strerror(errno));
			break;
		}
		slot = r == first ? first_s : r == second ? second_s : r == third ? third_s : NULL;
		if (!slot) {
			bad = 1;
			continue;
		}
		if (WIFEXITED(st))
			snprintf(slot, 64, "exited %d", WEXITSTATUS(st));
		else if (WIFSIGNALED(st))
			snprintf(slot, 64, "killed by signal %d%s", WTERMSIG(st), WCOREDUMP(st) ? " (core)" : "");
		else
			snprintf(slot, 64, "status 0x%x", st);
	}
	snprintf(line, sizeof line, "zombies: first %s, second %s, third %s, then %s%s", first_s, second_s, third_s, end_s,
		 bad ? ", and an unknown child" : "");
	printf("%s\n", line);
	return strcmp(line, "zombies: first exited 42, second killed by signal 10, third exited 0, then ECHILD") ? 1 : 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	if (argc == 3 && !strcmp(argv[1], "vmflags"))
		return vmflags_mode(argv[2]);
	if (argc == 2 && !strcmp(argv[1], "zombies"))
		return zombies_mode();
	fprintf(stderr, "usage: %s vmflags PREFIX | zombies\n", argv[0]);
	return 2;
}
