/*
 * fdstate: state a process keeps in descriptors and in its mm that lives
 * nowhere in its memory, used after a checkpoint so a restore that lost it
 * shows:
 *   - an eventfd with EFD_SEMAPHORE|EFD_NONBLOCK and counter 3 (each read
 *     takes 1),
 *   - an eventfd with EFD_CLOEXEC and counter 2^33 + 5 (wider than the
 *     initial value eventfd2 takes),
 *   - a signalfd for SIGUSR1 and SIGUSR2, SFD_NONBLOCK, with SIGUSR1
 *     blocked and pending,
 *   - a MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED registration.
 *
 *   fdstate          the process alone
 *   fdstate tree     the same, and a child forked before the checkpoint with
 *                    an eventfd (counter 7) and a signalfd (SIGUSR2 pending)
 *                    of its own; it tells the parent it is ready through one
 *                    pipe and waits on another for the parent to go on
 *   fdstate shared   the tree, with the first eventfd made before the fork:
 *                    one counter two processes hold (refused by name)
 *   fdstate timer-threads  none of that: a SIGEV_THREAD timer every 1 ms
 *                    (glibc clones a thread per expiry) for 30 ms, then
 *                    exit 0 — its end races a clone, as CRIU's ZDTM
 *                    pthread_timers does (the agent must still see it end)
 *
 * fdstate_checkpoint() is where the host stops it. After it the process
 * reads everything back and prints one line:
 *   fdstate ok: sem 1 1 1 again, big 8589934597, signal 10, membarrier 0[, child 0]
 * Exit 2: an eventfd read failed or gave something else (its errno
 * printed: EBADF when the descriptor is not there), 3: the signalfd, 4: the
 * membarrier (EPERM when the process is no longer registered), 5: the
 * child failed, 1: setup.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <linux/membarrier.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BIG_COUNT ((1ULL << 33) + 5)

static long membarrier(int cmd)
{
	return syscall(__NR_membarrier, cmd, 0, 0);
}

__attribute__((noinline)) void fdstate_checkpoint(void)
{
	__asm__ volatile("" ::: "memory");
}

static int fail(int code, const char *what)
{
	printf("fdstate %s: %s\n", what, strerror(errno));
	fflush(stdout);
	return code;
}

static int read_count(int fd, uint64_t *value)
{
	return read(fd, value, sizeof(*value)) == (ssize_t)sizeof(*value) ? 0 : -1;
}

static int signalfd_for(int signo, int also)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, signo);
	if (also)
		sigaddset(&set, also);
	if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
		return -1;
	int fd = signalfd(-1, &set, SFD_NONBLOCK);
	if (fd >= 0 && raise(signo) != 0)
		return -1;
	return fd;
}

/* The child of "tree" and "shared": its own eventfd and signalfd, read back once the parent lets it go. */
static int child(int ready, int go)
{
	int efd = eventfd(7, 0);
	int sfd = signalfd_for(SIGUSR2, 0);
	if (efd < 0 || sfd < 0 || write(ready, "r", 1) != 1)
		return 1;
	char byte;
	if (read(go, &byte, 1) != 1)
		return 1;
	uint64_t value;
	if (read_count(efd, &value) != 0 || value != 7)
		return 2;
	struct signalfd_siginfo info;
	if (read(sfd, &info, sizeof(info)) != (ssize_t)sizeof(info) || info.ssi_signo != SIGUSR2)
		return 3;
	return 0;
}

static void tick(union sigval value)
{
	(void)value;
}

static int timer_threads(void)
{
	struct sigevent event = { .sigev_notify = SIGEV_THREAD, .sigev_notify_function = tick };
	struct itimerspec every_ms = { .it_interval = { .tv_nsec = 1000000 }, .it_value = { .tv_nsec = 1000000 } };
	timer_t timer;

	if (timer_create(CLOCK_MONOTONIC, &event, &timer) != 0 || timer_settime(timer, 0, &every_ms, NULL) != 0)
		return fail(1, "timer");
	usleep(30000);
	printf("fdstate timer-threads ok\n");
	return 0;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "";
	if (!strcmp(mode, "timer-threads"))
		return timer_threads();
	int tree = !strcmp(mode, "tree") || !strcmp(mode, "shared");
	int sem = -1;
	if (!strcmp(mode, "shared"))
		sem = eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK);
	pid_t pid = 0;
	int ready[2], go[2];
	if (tree) {
		if (pipe(ready) != 0 || pipe(go) != 0)
			return fail(1, "pipe");
		pid = fork();
		if (pid < 0)
			return fail(1, "fork");
		if (pid == 0) {
			close(ready[0]);
			close(go[1]);
			_exit(child(ready[1], go[0]));
		}
		close(ready[1]);
		close(go[0]);
		char byte;
		if (read(ready[0], &byte, 1) != 1)
			return fail(1, "child not ready");
	}
	if (sem < 0)
		sem = eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK);
	int big = eventfd(0, EFD_CLOEXEC);
	uint64_t add = BIG_COUNT;
	if (sem < 0 || big < 0 || write(big, &add, sizeof(add)) != (ssize_t)sizeof(add))
		return fail(1, "eventfd");
	int sfd = signalfd_for(SIGUSR1, SIGUSR2);
	if (sfd < 0)
		return fail(1, "signalfd");
	if (membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) != 0)
		return fail(1, "membarrier register");

	fdstate_checkpoint();

	if (tree && write(go[1], "g", 1) != 1)
		return fail(1, "go");
	uint64_t s1, s2, s3, again = 0, value;
	if (read_count(sem, &s1) != 0 || read_count(sem, &s2) != 0 || read_count(sem, &s3) != 0)
		return fail(2, "semaphore eventfd read");
	/* Empty now: a non-blocking semaphore answers EAGAIN. */
	if (read_count(sem, &again) == 0 || errno != EAGAIN)
		return fail(2, "semaphore eventfd not empty after 3 reads");
	if (read_count(big, &value) != 0)
		return fail(2, "eventfd read");
	if (s1 != 1 || s2 != 1 || s3 != 1 || value != BIG_COUNT) {
		printf("fdstate eventfd: sem %" PRIu64 " %" PRIu64 " %" PRIu64 ", big %" PRIu64 "\n", s1, s2, s3, value);
		return 2;
	}
	struct signalfd_siginfo info;
	if (read(sfd, &info, sizeof(info)) != (ssize_t)sizeof(info))
		return fail(3, "signalfd read");
	if (info.ssi_signo != SIGUSR1) {
		printf("fdstate signalfd: signal %u\n", info.ssi_signo);
		return 3;
	}
	long barrier = membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
	if (barrier != 0)
		return fail(4, "membarrier");
	int status = 0;
	if (tree && (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)) {
		printf("fdstate child: status 0x%x\n", status);
		return 5;
	}
	printf("fdstate ok: sem 1 1 1 again, big %llu, signal %u, membarrier %ld%s\n", BIG_COUNT, info.ssi_signo, barrier, tree ? ", child 0" : "");
	return 0;
}
