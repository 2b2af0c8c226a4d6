/*
 * sleeper: one timed blocking call, checkpointed while it blocks.
 *
 *   sleeper MODE HANDLER MS
 *
 * MODE is the call, each asking for MS milliseconds:
 *   nanosleep        glibc nanosleep(req, &rem): clock_nanosleep(CLOCK_REALTIME, 0) in glibc 2.36
 *   sys-nanosleep    syscall(SYS_nanosleep, req, &rem): system call 35
 *   monotonic        clock_nanosleep(CLOCK_MONOTONIC, 0, req, &rem)
 *   absolute         clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, start + MS): ERESTARTNOHAND when interrupted
 *   poll             poll(NULL, 0, MS): ERESTART_RESTARTBLOCK, remaining time in the kernel only
 *   vfork            vfork() of a child that sleeps MS and exits: the parent waits in the kernel,
 *                    killable only, so no PTRACE_INTERRUPT stops it meanwhile (the child is not
 *                    traced: the agent asks for no vfork events, and it dies with the parent)
 * The relative sleeps answer ERESTART_RESTARTBLOCK when interrupted.
 * HANDLER is none, or norestart: a SIGUSR2 handler installed without
 * SA_RESTART (never sent: it must not change how the call resumes).
 *
 * Prints
 *   sleeper MODE HANDLER ret=R errno=E on-time=B
 *   elapsed-ms=N
 * where on-time is 1 when the call returned between MS and MS + 500 ms after
 * it was issued (CLOCK_MONOTONIC), as an uninterrupted call does; exits 0
 * when the call returned 0 on time, 1 otherwise.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LATE_MS 500

static void on_usr2(int sig)
{
	(void)sig;
}

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* The vfork mode, in a function of its own so that no local of main() lives across vfork(). */
static __attribute__((noinline)) long vfork_wait(const struct timespec *req, int *err)
{
	pid_t child = vfork();

	if (child == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		syscall(SYS_nanosleep, req, NULL);
		_exit(0);
	}
	if (child < 0) {
		*err = errno;
		return -1;
	}
	while (waitpid(child, NULL, 0) < 0 && errno == EINTR)
		;
	*err = 0;
	return 0;
}

int main(int argc, char **argv)
{
	struct timespec req, rem = { 0, 0 };
	long long start, elapsed_ms, ms;
	long ret;
	int err = 0, on_time;

	if (argc != 4 || (strcmp(argv[2], "none") && strcmp(argv[2], "norestart")) || (ms = atoll(argv[3])) <= 0) {
		fprintf(stderr, "usage: sleeper nanosleep|sys-nanosleep|monotonic|absolute|poll|vfork none|norestart MS\n");
		return 2;
	}
	if (!strcmp(argv[2], "norestart")) {
		struct sigaction sa;

		memset(&sa, 0, sizeof sa);
		sa.sa_handler = on_usr2;
		sigaction(SIGUSR2, &sa, NULL);
	}
	req.tv_sec = ms / 1000;
	req.tv_nsec = (ms % 1000) * 1000000;
	start = now_ns();
	if (!strcmp(argv[1], "nanosleep")) {
		ret = nanosleep(&req, &rem);
		err = ret ? errno : 0;
	} else if (!strcmp(argv[1], "sys-nanosleep")) {
		ret = syscall(SYS_nanosleep, &req, &rem);
		err = ret ? errno : 0;
	} else if (!strcmp(argv[1], "monotonic")) {
		ret = err = clock_nanosleep(CLOCK_MONOTONIC, 0, &req, &rem);
	} else if (!strcmp(argv[1], "absolute")) {
		struct timespec until;
		long long deadline = start + ms * 1000000LL;

		until.tv_sec = deadline / 1000000000LL;
		until.tv_nsec = deadline % 1000000000LL;
		ret = err = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL);
	} else if (!strcmp(argv[1], "poll")) {
		ret = poll(NULL, 0, (int)ms);
		err = ret < 0 ? errno : 0;
	} else if (!strcmp(argv[1], "vfork")) {
		ret = vfork_wait(&req, &err);
	} else {
		fprintf(stderr, "sleeper: unknown mode %s\n", argv[1]);
		return 2;
	}
	elapsed_ms = (now_ns() - start) / 1000000;
	on_time = elapsed_ms >= ms && elapsed_ms <= ms + LATE_MS;
	printf("sleeper %s %s ret=%ld errno=%d on-time=%d\nelapsed-ms=%lld\n", argv[1], argv[2], ret, err, on_time, elapsed_ms);
	return ret == 0 && on_time ? 0 : 1;
}
