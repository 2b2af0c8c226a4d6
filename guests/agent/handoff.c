/*
 * Handing a process to another checkpointer (CRIU) and taking it back:
 * DETACH, REAP, REAP_ORPHANS and ATTACH; letting a restored process tree go its own way:
 * TRACE_FORKS and RELEASE.
 */
#include "agent.h"

/* ------------------------------------------------------------------------ */
/* Handing a process to another checkpointer (CRIU) and taking it back.
 *
 * DETACH leaves a stopped process in a job-control stop with no tracer, as
 * `criu dump` needs it; the process is still the agent's child, so once the
 * dump kills it REAP collects it (its pid must be free for `criu restore`).
 * ATTACH seizes a process the agent did not spawn (the restored one) and
 * brings every thread into a ptrace stop, after which every op works on it
 * as on a spawned one. */

/* Children detached and not yet reaped: killed when the agent exits. */
static pid_t detached[64];
static size_t ndetached;

static void forget_detached(pid_t pid)
{
	for (size_t i = 0; i < ndetached; i++)
		if (detached[i] == pid) {
			detached[i] = detached[--ndetached];
			return;
		}
}

void kill_detached(void)
{
	while (ndetached) {
		pid_t pid = detached[--ndetached];
		int st;

		kill(pid, SIGKILL);
		while (waitpid(pid, &st, __WALL) < 0 && errno == EINTR)
			;
	}
}

/* The state letter of /proc/PID/task/TID/stat ('?' when unreadable). */
static char task_state(pid_t pid, pid_t tid)
{
	char path[96], buf[512], *p;
	ssize_t n;
	int fd;

	snprintf(path, sizeof path, "/proc/%d/task/%d/stat", (int)pid, (int)tid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return '?';
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return '?';
	buf[n] = 0;
	p = strrchr(buf, ')');
	return p && p[1] == ' ' ? p[2] : '?';
}

#define DETACH_STOP_TIMEOUT_MS 5000u

int op_detach(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	struct timespec deadline, now;

	if (parsed(c))
		return -1;
	if (!is_tracked(pid))
		return fail(c, ESRCH, "pid: %d is not a process this agent spawned (or it was already reaped)", (int)pid);
	for (size_t i = 0; i < ntasks; i++)
		if (tasks[i].tgid == pid && !tasks[i].stopped)
			return fail(c, EBUSY, "thread %d of process %d is not in a ptrace stop", (int)tasks[i].tid, (int)pid);
	if (ndetached == sizeof detached / sizeof detached[0])
		return fail(c, ENOSPC, "%zu detached processes are not reaped yet", ndetached);
	/* SIGSTOP queued process-wide while every thread is still in a ptrace
	 * stop: whichever thread leaves its stop first takes it on its way back
	 * to user mode and stops the whole group before any user instruction.
	 * Each thread detaches with no signal of its own: a SIGTRAP of a hit
	 * held in a signal-delivery stop is discarded, as RUN would. Debug
	 * registers a tracer set stay with the thread (x86 clears them at exec
	 * and exit, not at detach): the next checkpointer sees them as the
	 * process's own state. */
	if (kill(pid, SIGSTOP) < 0)
		return fail_errno(c, "kill %d SIGSTOP", (int)pid);
	for (size_t i = 0; i < ntasks; i++)
		if (tasks[i].tgid == pid && ptrace(PTRACE_DETACH, tasks[i].tid, 0, 0) < 0 && errno != ESRCH)
			return fail_errno(c, "PTRACE_DETACH %d", (int)tasks[i].tid);
	forget_process(pid);
	detached[ndetached++] = pid;
	/* Answer only once the kernel shows every thread stopped (state T). */
	deadline_in(&deadline, DETACH_STOP_TIMEOUT_MS);
	for (;;) {
		char path[64];
		struct dirent *e;
		bool all = true;
		DIR *d;

		snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
		d = opendir(path);
		if (!d)
			return fail_errno(c, "opendir %s", path);
		while ((e = readdir(d)) != NULL)
			if (e->d_name[0] != '.' && task_state(pid, (pid_t)atoi(e->d_name)) != 'T')
				all = false;
		closedir(d);
		if (all)
			return 0;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec > deadline.tv_sec || (now.tv_sec == deadline.tv_sec && now.tv_nsec > deadline.tv_nsec))
			return fail(c, ETIMEDOUT, "process %d not in a job-control stop within %u ms of its detach", (int)pid,
				    DETACH_STOP_TIMEOUT_MS);
		usleep(1000);
	}
}

int op_reap(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	uint32_t timeout_ms = rd_u32(&c->in, "timeout_ms");
	struct timespec deadline, now;
	bool known = false;
	int st;

	if (parsed(c))
		return -1;
	for (size_t i = 0; i < ndetached; i++)
		known = known || detached[i] == pid;
	if (!known)
		return fail(c, ESRCH, "pid: %d is not a process this agent detached (or it was already reaped)", (int)pid);
	deadline_in(&deadline, timeout_ms);
	for (;;) {
		pid_t r = waitpid(pid, &st, __WALL | WNOHANG);

		if (r < 0 && errno != EINTR)
			return fail_errno(c, "waitpid %d", (int)pid);
		if (r == pid && (WIFEXITED(st) || WIFSIGNALED(st)))
			break;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (timeout_ms && (now.tv_sec > deadline.tv_sec ||
				   (now.tv_sec == deadline.tv_sec && now.tv_nsec > deadline.tv_nsec)))
			return fail(c, ETIMEDOUT, "process %d did not end within %u ms", (int)pid, timeout_ms);
		usleep(1000);
	}
	forget_detached(pid);
	wr_u32(&c->out, (uint32_t)st);
	return 0;
}

/* Whether pid is a child DETACH left for REAP to collect. */
static bool is_detached(pid_t pid)
{
	for (size_t i = 0; i < ndetached; i++)
		if (detached[i] == pid)
			return true;
	return false;
}

/* Whether a process (a zombie included) holds pid. */
static bool pid_exists(pid_t pid)
{
	return kill(pid, 0) == 0 || errno != ESRCH;
}

/* Reaps the ended children that are no task of the agent's, each written to out as (pid, wait status). */
static int reap_untracked(struct wr *out, uint32_t *nreaped)
{
	char path[64];
	int child;
	FILE *f;

	snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)getpid());
	f = fopen(path, "re");
	if (!f)
		return -1;
	while (fscanf(f, "%d", &child) == 1) {
		siginfo_t si;
		int st;

		if (is_tracked(child) || is_detached(child))
			continue;
		memset(&si, 0, sizeof si);
		if (waitid(P_PID, (id_t)child, &si, WEXITED | WNOHANG | WNOWAIT | __WALL) < 0 || si.si_pid != child)
			continue; /* still running (or gone meanwhile) */
		if (waitpid(child, &st, __WALL | WNOHANG) != child)
			continue;
		wr_u32(out, (uint32_t)child);
		wr_u32(out, (uint32_t)st);
		(*nreaped)++;
	}
	fclose(f);
	return 0;
}

/*
 * REAP_ORPHANS: reaps every zombie child of the agent that it neither
 * traces nor detached — orphans the agent adopted as child subreaper, such
 * as the children of a tree `criu dump` killed: their zombies come to the
 * agent when their parent dies, and each keeps its pid taken until it is
 * reaped, so `criu restore` could not fork it again ("Can't fork for PID:
 * File exists"). A child is peeked with WNOWAIT first and reaped only when
 * it has ended and is no task of the agent's: a tracee's stops and exit
 * belong to the waits that expect them, a detached child's to REAP. Then
 * waits until none of the pids given exists any more (each an orphan the
 * agent reaps, or someone else's child its parent reaps), reaping as they
 * end; ETIMEDOUT naming one still there after timeout_ms. Answers the pids
 * reaped with their wait statuses.
 */
int op_reap_orphans(struct call *c)
{
	uint32_t timeout_ms = rd_u32(&c->in, "timeout_ms");
	uint32_t n = rd_count(&c->in, "pids", 4);
	pid_t *pids = NULL;
	struct timespec deadline, now;
	uint32_t nreaped = 0;
	size_t count_at;
	int rc = -1;

	if (n)
		pids = calloc(n, sizeof *pids);
	if (n && !pids)
		return fail(c, ENOMEM, "pids");
	for (uint32_t i = 0; i < n; i++)
		pids[i] = rd_pid(&c->in);
	if (parsed(c))
		goto out;
	count_at = wr_mark(&c->out);
	deadline_in(&deadline, timeout_ms);
	for (;;) {
		pid_t left = 0;

		if (reap_untracked(&c->out, &nreaped) < 0) {
			fail_errno(c, "/proc/self/task/%d/children", (int)getpid());
			goto out;
		}
		for (uint32_t i = 0; i < n && !left; i++)
			if (pid_exists(pids[i]))
				left = pids[i];
		if (!left)
			break;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec > deadline.tv_sec || (now.tv_sec == deadline.tv_sec && now.tv_nsec > deadline.tv_nsec)) {
			fail(c, ETIMEDOUT, "process %d still exists %u ms on (not an orphan of the agent's, or not ended)",
			     (int)left, timeout_ms);
			goto out;
		}
		usleep(1000);
	}
	wr_patch_u32(&c->out, count_at, nreaped);
	rc = 0;
out:
	free(pids);
	return rc;
}

/* Seizes one thread and collects its first stop: 0, -1 on failure, or 1
 * when a thread other than the leader ended before it stopped — a short-lived
 * thread (a SIGEV_THREAD timer's: CRIU's ZDTM pthread_timers) listed in
 * /proc/PID/task a moment before it exited, with nothing left to stop. */
static int seize_thread(struct call *c, pid_t pid, pid_t tid)
{
	int st;

	if (ptrace(PTRACE_SEIZE, tid, 0,
		   (void *)(long)(PTRACE_O_EXITKILL | PTRACE_O_TRACEEXEC | PTRACE_O_TRACESYSGOOD |
				  PTRACE_O_TRACECLONE)) < 0) {
		if (errno == ESRCH && tid != pid)
			return 1;
		return fail_errno(c, "PTRACE_SEIZE %d", (int)tid);
	}
	if (!task_add(tid, pid, false))
		return fail(c, ENOMEM, "task table");
	if (ptrace(PTRACE_INTERRUPT, tid, 0, 0) < 0)
		return fail_errno(c, "PTRACE_INTERRUPT %d", (int)tid);
	/* A job-control-stopped thread reports PTRACE_EVENT_STOP for the
	 * interrupt (its group-stop); a running one the same, with SIGTRAP. A
	 * signal arriving first is left pending: re-interrupt after passing it on. */
	for (;;) {
		if (wait_for(tid, &st) < 0)
			return fail_errno(c, "waitpid %d", (int)tid);
		if ((WIFEXITED(st) || WIFSIGNALED(st)) && tid != pid)
			return 1; /* reaped: wait_for forgot it */
		if (WIFEXITED(st) || WIFSIGNALED(st))
			return fail(c, ESRCH, "thread %d ended while being attached", (int)tid);
		if (st >> 16 == PTRACE_EVENT_STOP)
			return 0;
		if (resume(tid, PTRACE_CONT, st >> 16 == 0 ? WSTOPSIG(st) : 0) < 0 || interrupt(tid) < 0)
			return fail_errno(c, "resuming and interrupting %d", (int)tid);
	}
}

int op_attach(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	bool grew = true;

	if (parsed(c))
		return -1;
	if (pid == getpid())
		return fail(c, EINVAL, "pid: %d is the agent itself", (int)pid);
	if (is_tracked(pid))
		return fail(c, EEXIST, "pid: %d is already traced by this agent", (int)pid);
	if (tgid_of(pid) != pid)
		return fail(c, ESRCH, "pid: %d is no process (not a thread-group leader, or gone)", (int)pid);
	/* Until a listing of /proc/PID/task shows no thread not yet seized: a
	 * thread created meanwhile by one not yet stopped is caught next round;
	 * once all are seized, TRACECLONE covers the rest. */
	while (grew) {
		char path[64];
		struct dirent *e;
		DIR *d;

		grew = false;
		snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
		d = opendir(path);
		if (!d) {
			fail_errno(c, "opendir %s", path);
			goto undo;
		}
		while ((e = readdir(d)) != NULL) {
			pid_t tid = (pid_t)atoi(e->d_name);

			if (tid <= 0 || task_find(tid))
				continue;
			int seized = seize_thread(c, pid, tid);

			if (seized < 0) {
				closedir(d);
				goto undo;
			}
			grew = grew || seized == 0;
		}
		closedir(d);
	}
	write_threads(&c->out, pid);
	return 0;
undo:
	/* Nothing half-attached: detach what was seized, leaving it stopped. */
	kill(pid, SIGSTOP);
	for (size_t i = 0; i < ntasks; i++)
		if (tasks[i].tgid == pid)
			ptrace(PTRACE_DETACH, tasks[i].tid, 0, 0);
	forget_process(pid);
	return -1;
}

/* ------------------------------------------------------------------------ */
/* Process trees (a restore creates each child by an injected clone3 in its
 * parent, and lets the tree run).
 *
 * TRACE_FORKS turns PTRACE_O_TRACEFORK and TRACEVFORK on or off for every
 * thread of a tracked process: with them on, a child that an injected clone3
 * with exit signal SIGCHLD creates is traced from its first instruction
 * (INJECT_SYSCALL records it and collects its first stop). The child
 * inherits the options in force; the host turns them off again.
 *
 * RELEASE detaches every thread of a tracked process (PTRACE_DETACH, no
 * signal: a hit's SIGTRAP held in a stop is discarded) and forgets it: the
 * process runs on untraced, a child of its own parent. */

#define TRACE_OPTIONS (PTRACE_O_EXITKILL | PTRACE_O_TRACEEXEC | PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACECLONE)

int op_trace_forks(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	uint32_t on = rd_u32(&c->in, "on");
	long options = TRACE_OPTIONS | (on ? PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK : 0);

	if (parsed(c))
		return -1;
	if (on > 1)
		return fail(c, EINVAL, "on: %u is neither 0 nor 1", on);
	if (!is_tracked(pid) || tgid_of(pid) != pid)
		return fail(c, ESRCH, "pid: %d is not a process this agent traces", (int)pid);
	for (size_t i = 0; i < ntasks; i++)
		if (tasks[i].tgid == pid && ptrace(PTRACE_SETOPTIONS, tasks[i].tid, 0, (void *)options) < 0)
			return fail_errno(c, "PTRACE_SETOPTIONS %d", (int)tasks[i].tid);
	return 0;
}

int op_release(struct call *c)
{
	pid_t pid = rd_pid(&c->in);

	if (parsed(c))
		return -1;
	if (!is_tracked(pid) || tgid_of(pid) != pid)
		return fail(c, ESRCH, "pid: %d is not a process this agent traces", (int)pid);
	for (size_t i = 0; i < ntasks; i++)
		if (tasks[i].tgid == pid && !tasks[i].stopped)
			return fail(c, EBUSY, "thread %d of pid %d is not in a collected stop", (int)tasks[i].tid, (int)pid);
	for (size_t i = 0; i < ntasks; i++)
		if (tasks[i].tgid == pid && ptrace(PTRACE_DETACH, tasks[i].tid, 0, 0) < 0 && errno != ESRCH)
			return fail_errno(c, "PTRACE_DETACH %d", (int)tasks[i].tid);
	forget_process(pid);
	return 0;
}
