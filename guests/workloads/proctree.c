/*
 * A three-process tree for the process-tree case: a parent, its child and
 * its grandchild, joined by one MAP_SHARED anonymous page and a pipe from
 * the grandchild to the parent (the child holds neither end by then). The child leads
 * a process group of its own; the grandchild leads a session of its own
 * (setsid): the tree spans two sessions and three groups. Each process updates a counter in the
 * shared page in a fixed order; the grandchild fills private memory, stops
 * at proctree_grandchild_checkpoint (where the case checkpoints the whole
 * tree) with PIPE_BEFORE bytes queued in the pipe, and afterwards checks
 * what a restore could get wrong: its parent,
 * session and group, its private memory. The child checks its parent, its
 * group and its grandchild's exit; the root waits and prints one line,
 * independent of pids:
 *   proctree ok: counter N, child 0x0, grandchild 0x0, child exit 9, pipe 3100 bytes
 * A restore that gives each process a private copy of the page shows in
 * the counter; wrong parent links in the reports; lost pipe contents in the
 * byte count.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

struct shared {
	volatile int go;
	volatile pid_t grandchild;
	volatile uint64_t counter;
	volatile int child_report;
	volatile int grandchild_report;
};

/* Where the case finds the page (read through the root). */
struct shared *proctree_shared;

#define PRIVATE_WORDS 8192
static uint64_t private_words[PRIVATE_WORDS];

#define PIPE_BEFORE 3000
#define PIPE_AFTER 100

static int pipe_fds[2];

static unsigned char pipe_byte(unsigned i) { return (unsigned char)(i * 7 + 1); }

static int write_pattern(int fd, unsigned from, unsigned n)
{
	unsigned char buf[PIPE_BEFORE];

	for (unsigned i = 0; i < n; i++)
		buf[i] = pipe_byte(from + i);
	return write(fd, buf, n) == (ssize_t)n ? 0 : 32;
}

#define GRANDCHILD_EXIT 7
#define CHILD_EXIT 9

/* Breakpoint targets: called once each. */
__attribute__((noinline)) void proctree_ready(void) { __asm__ volatile("" ::: "memory"); }
__attribute__((noinline)) void proctree_parent_waits(void) { __asm__ volatile("" ::: "memory"); }
__attribute__((noinline)) void proctree_grandchild_checkpoint(void) { __asm__ volatile("" ::: "memory"); }

static uint64_t word(unsigned i) { return (uint64_t)i * 0x9e3779b97f4a7c15ull ^ 0x5bd1e995ull; }

static void __attribute__((noreturn)) grandchild(pid_t parent)
{
	struct shared *s = proctree_shared;
	pid_t me = getpid();
	int report = 0;

	if (setsid() != me)
		report |= 1;
	s->grandchild = me;
	while (!s->go)
		sched_yield();
	for (unsigned i = 0; i < PRIVATE_WORDS; i++)
		private_words[i] = word(i);
	s->counter = s->counter * 31 + 3;
	report |= write_pattern(pipe_fds[1], 0, PIPE_BEFORE);
	proctree_grandchild_checkpoint();
	if (getppid() != parent)
		report |= 2;
	if (getsid(0) != me)
		report |= 4;
	if (getpgid(0) != me)
		report |= 8;
	for (unsigned i = 0; i < PRIVATE_WORDS; i++)
		if (private_words[i] != word(i)) {
			report |= 16;
			break;
		}
	report |= write_pattern(pipe_fds[1], PIPE_BEFORE, PIPE_AFTER);
	s->counter = s->counter * 31 + 5;
	s->grandchild_report = report;
	_exit(GRANDCHILD_EXIT);
}

static void __attribute__((noreturn)) child(pid_t parent)
{
	struct shared *s = proctree_shared;
	pid_t me = getpid(), gc;
	pid_t sid = getsid(0);
	int report = 0, st = 0;

	if (setpgid(0, 0) != 0)
		report |= 1;
	s->counter = s->counter * 31 + 2;
	close(pipe_fds[0]);
	gc = fork();
	if (gc == 0)
		grandchild(me);
	close(pipe_fds[1]);
	if (gc < 0 || waitpid(gc, &st, 0) != gc || !WIFEXITED(st) || WEXITSTATUS(st) != GRANDCHILD_EXIT)
		report |= 2;
	if (getppid() != parent)
		report |= 4;
	if (getpgid(0) != me)
		report |= 8;
	if (getsid(0) != sid)
		report |= 16;
	s->counter = s->counter * 31 + 11;
	s->child_report = report;
	_exit(CHILD_EXIT);
}

int main(void)
{
	struct shared *s = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	const uint64_t expected = (((1ull * 31 + 2) * 31 + 3) * 31 + 5) * 31 + 11;
	pid_t me = getpid(), c;
	int st = 0, code;
	unsigned char got[PIPE_BEFORE + PIPE_AFTER + 1];
	size_t n = 0;
	ssize_t r;
	int pattern_ok = 1;

	if (s == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	proctree_shared = s;
	s->counter = 1;
	if (pipe(pipe_fds) != 0) {
		perror("pipe");
		return 2;
	}
	c = fork();
	if (c < 0) {
		perror("fork");
		return 2;
	}
	if (c == 0)
		child(me);
	close(pipe_fds[1]);
	while (!s->grandchild)
		sched_yield();
	proctree_ready();
	s->go = 1;
	proctree_parent_waits();
	if (waitpid(c, &st, 0) != c || !WIFEXITED(st))
		code = -1;
	else
		code = WEXITSTATUS(st);
	/* Every write end is closed once the child has reaped the grandchild: read to end of file. */
	while (n < sizeof got && (r = read(pipe_fds[0], got + n, sizeof got - n)) > 0)
		n += (size_t)r;
	for (size_t i = 0; i < n; i++)
		if (got[i] != pipe_byte((unsigned)i))
			pattern_ok = 0;
	printf("proctree %s: counter %llu%s, child 0x%x, grandchild 0x%x, child exit %d, pipe %zu bytes%s\n",
	       s->counter == expected && !s->child_report && !s->grandchild_report && code == CHILD_EXIT &&
			       n == PIPE_BEFORE + PIPE_AFTER && pattern_ok ? "ok" : "mismatch",
	       (unsigned long long)s->counter, s->counter == expected ? "" : " (not the one page all three share)",
	       s->child_report, s->grandchild_report, code, n, pattern_ok ? "" : " (not the bytes written)");
	return 0;
}
