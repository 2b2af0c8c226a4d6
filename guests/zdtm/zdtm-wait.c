/*
 * zdtm-wait: a ZDTM-protocol test (protocol.h) that waits for SIGTERM.
 *
 *   zdtm-wait --pidfile=T.pid --outfile=T.out [fail | child]
 *
 * Before it says it is ready it writes a pattern to a private heap page and
 * a word to its shared page. Woken by SIGTERM it checks that it still leads
 * its own session, that fd 0 is /dev/null, fd 1 and 2 its outfile (O_APPEND),
 * its directory fd the working directory, the heap pattern intact, and that
 * the shared page is still a shared mapping (the "s" in /proc/self/maps)
 * holding its word — a restore that made it private memory fails here.
 * Then it prints PASS, or FAIL naming the first check that failed. With the
 * argument `fail` it fails on purpose (a test that fails natively). With
 * `child` it forks a child that sleeps in pause() before it is ready: a
 * process tree (which crh refuses to checkpoint as one process); the child
 * outlives it, left for whoever ran the test to clean up.
 */
#define _GNU_SOURCE
#include "protocol.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define SHARED_WORD 0x5a17ed00u
#define HEAP_WORDS 1024

/* Whether the mapping at `address` is shared, from its /proc/self/maps line. */
static int mapped_shared(const void *address)
{
	char line[512];
	unsigned long start, end;
	char perms[8];
	int shared = 0;
	FILE *maps = fopen("/proc/self/maps", "re");

	if (!maps)
		return 0;
	while (fgets(line, sizeof line, maps)) {
		if (sscanf(line, "%lx-%lx %7s", &start, &end, perms) == 3 && start == (unsigned long)address) {
			shared = perms[3] == 's';
			break;
		}
	}
	fclose(maps);
	return shared;
}

int main(int argc, char **argv)
{
	int first = zp_init(argc, argv);
	int fail_on_purpose = first < argc && strcmp(argv[first], "fail") == 0;
	int with_child = first < argc && strcmp(argv[first], "child") == 0;
	uint32_t *heap = malloc(HEAP_WORDS * sizeof *heap);
	struct stat st, cwd, out1, out2;
	int i, flags;

	if (!heap) {
		zp_fail("malloc");
		return 1;
	}
	for (i = 0; i < HEAP_WORDS; i++)
		heap[i] = 0x9e3779b9u * (uint32_t)(i + 1);
	zp_shared[1] = SHARED_WORD;
	if (with_child && fork() == 0) {
		for (;;)
			pause();
	}
	zp_daemon();
	zp_msg("waiting for SIGTERM");

	zp_waitsig();

	if (fail_on_purpose) {
		zp_fail("asked to fail (the argument `fail`)");
		return 1;
	}
	if (getsid(0) != getpid()) {
		zp_fail("not the leader of its own session (sid %d, pid %d)", (int)getsid(0), (int)getpid());
		return 1;
	}
	if (fstat(0, &st) < 0 || !S_ISCHR(st.st_mode) || st.st_rdev != makedev(1, 3)) {
		zp_fail("fd 0 is not /dev/null");
		return 1;
	}
	flags = fcntl(1, F_GETFL);
	if (fstat(1, &out1) < 0 || fstat(2, &out2) < 0 || out1.st_ino != out2.st_ino || !S_ISREG(out1.st_mode) || flags < 0 || !(flags & O_APPEND)) {
		zp_fail("fds 1 and 2 are not the outfile, opened O_APPEND");
		return 1;
	}
	if (fstat(zp_dirfd, &st) < 0 || stat(".", &cwd) < 0 || st.st_ino != cwd.st_ino || st.st_dev != cwd.st_dev) {
		zp_fail("the directory fd %d is not the working directory", zp_dirfd);
		return 1;
	}
	for (i = 0; i < HEAP_WORDS; i++) {
		if (heap[i] != 0x9e3779b9u * (uint32_t)(i + 1)) {
			zp_fail("heap word %d is 0x%x", i, heap[i]);
			return 1;
		}
	}
	if (zp_shared[1] != SHARED_WORD) {
		zp_fail("the shared page holds 0x%x, not 0x%x", zp_shared[1], SHARED_WORD);
		return 1;
	}
	if (!mapped_shared((const void *)zp_shared)) {
		zp_fail("the shared page at %p is no longer a shared mapping", (void *)zp_shared);
		return 1;
	}
	zp_pass();
	return 0;
}
