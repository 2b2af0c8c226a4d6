/*
 * holdstate: takes on state a checkpoint image cannot hold, then waits to be
 * checkpointed — which must be refused, naming the state.
 *
 *   holdstate [STATE...]
 *
 * Each STATE is one of:
 *   eventfd signalfd timerfd epoll inotify pipe socket memfd — a descriptor
 *   of that kind, left open;
 *   personality — personality(current | READ_IMPLIES_EXEC);
 *   seccomp     — no_new_privs and a seccomp filter that allows everything;
 *   timer       — a POSIX timer with notify SIGEV_THREAD (raw timer_create);
 *   timerfd     — a timerfd set with TFD_TIMER_CANCEL_ON_SET (other timerfds are captured);
 *   tracer      — a child that asks to be traced (PTRACE_TRACEME) and
 *                 stops itself: this process is its tracer;
 *   umask       — umask 077;
 *   rlimit      — RLIMIT_NOFILE soft limit lowered to 64;
 *   cwd         — chdir("/tmp").
 * With no STATE it holds nothing extra (the control: its checkpoint is
 * taken and restored).
 *
 * Then it calls holdstate_checkpoint() — the host checkpoints there — and
 * prints "holdstate resumed N personality=0x... umask=..." (N = the number
 * of states; the personality and umask it finds then, which a restore that
 * lost them changes) and exits 0; a tracer child is killed first.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The host's breakpoint goes here. */
__attribute__((noipa, used)) void holdstate_checkpoint(void)
{
	__asm__ volatile("nop" ::: "memory");
}

static int failed(const char *state)
{
	printf("holdstate setup %s failed\n", state);
	return 1;
}

static pid_t tracee;

static int take(const char *state)
{
	int fds[2];
	if (!strcmp(state, "eventfd"))
		return eventfd(0, 0) < 0;
	if (!strcmp(state, "signalfd")) {
		sigset_t set;
		sigemptyset(&set);
		sigaddset(&set, SIGUSR2);
		return signalfd(-1, &set, 0) < 0;
	}
	if (!strcmp(state, "timerfd")) {
		/* Captured in general (timers.ts); not one that must hear of clock changes. */
		struct itimerspec far = { .it_value = { .tv_sec = 4000000000 } };
		int fd = timerfd_create(CLOCK_REALTIME, 0);

		return fd < 0 || timerfd_settime(fd, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, &far, NULL) != 0;
	}
	if (!strcmp(state, "epoll"))
		return epoll_create1(0) < 0;
	if (!strcmp(state, "inotify"))
		return inotify_init1(0) < 0;
	if (!strcmp(state, "pipe"))
		return pipe(fds) != 0;
	if (!strcmp(state, "socket"))
		return socket(AF_UNIX, SOCK_STREAM, 0) < 0;
	if (!strcmp(state, "memfd"))
		return memfd_create("holdstate", 0) < 0;
	if (!strcmp(state, "personality"))
		return personality((unsigned long)personality(0xffffffff) | READ_IMPLIES_EXEC) < 0;
	if (!strcmp(state, "seccomp")) {
		struct sock_filter allow[] = { BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW) };
		struct sock_fprog prog = { .len = 1, .filter = allow };
		return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0;
	}
	if (!strcmp(state, "timer")) {
		/* Raw SIGEV_THREAD (the C library would make it SIGEV_THREAD_ID to a
		 * helper thread): the kernel keeps it as notify "thread", which a
		 * restore cannot create faithfully. */
		int id;
		struct sigevent ev;
		memset(&ev, 0, sizeof ev);
		ev.sigev_notify = SIGEV_THREAD;
		ev.sigev_signo = SIGUSR2;
		return syscall(SYS_timer_create, CLOCK_MONOTONIC, &ev, &id) != 0;
	}
	if (!strcmp(state, "tracer")) {
		tracee = fork();
		if (tracee == 0) {
			ptrace(PTRACE_TRACEME, 0, 0, 0);
			raise(SIGSTOP);
			_exit(0);
		}
		int status;
		return tracee < 0 || waitpid(tracee, &status, WUNTRACED) != tracee || !WIFSTOPPED(status);
	}
	if (!strcmp(state, "umask")) {
		umask(077);
		return 0;
	}
	if (!strcmp(state, "rlimit")) {
		struct rlimit r;
		if (getrlimit(RLIMIT_NOFILE, &r) != 0)
			return 1;
		r.rlim_cur = 64;
		return setrlimit(RLIMIT_NOFILE, &r) != 0;
	}
	if (!strcmp(state, "cwd"))
		return chdir("/tmp") != 0;
	return 1;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	for (int i = 1; i < argc; i++)
		if (take(argv[i]))
			return failed(argv[i]);
	holdstate_checkpoint();
	if (tracee > 0) {
		kill(tracee, SIGKILL);
		waitpid(tracee, NULL, 0);
	}
	mode_t mask = umask(0);
	printf("holdstate resumed %d personality=0x%x umask=%03o\n", argc - 1, (unsigned)personality(0xffffffff), (unsigned)mask);
	return 0;
}
