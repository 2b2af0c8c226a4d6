/*
 * SPAWN: a program started under ptrace, stopped before its first
 * instruction, with the personality, pid and stdio asked for.
 */
#include "agent.h"

/* Runs in the forked child: nothing here may return. */
static void __attribute__((noreturn)) spawn_child(int sync_fd, int err_fd, int in_fd, int out_fd, uint32_t flags,
						   const char *path, char **argv, char **envp)
{
	sigset_t none;
	char go;
	ssize_t n;
	int e;

	/* The agent's blocked SIGCHLD and ignored SIGPIPE (and whatever sshd
	 * left ignored) would otherwise survive execve into the workload. */
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	for (int s = 1; s < NSIG; s++)
		signal(s, SIG_DFL);

	/* Nothing the workload does may happen before the agent is its tracer. */
	do
		n = read(sync_fd, &go, 1);
	while (n < 0 && errno == EINTR);
	if (n != 1)
		_exit(127);

	if ((flags & SPAWN_NO_ASLR) &&
	    personality((unsigned long)personality(0xffffffff) | ADDR_NO_RANDOMIZE) < 0)
		goto failed;
	if (dup2(in_fd, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(out_fd, 2) < 0)
		goto failed;
	/* Only stdio reaches the workload: whatever the agent inherited (from
	 * sshd, or a test runner's pipes) would otherwise end up in checkpoints.
	 * err_fd stays until execve closes it. close_range: Linux 5.9. */
	if ((err_fd > 3 && syscall(SYS_close_range, 3u, (unsigned)err_fd - 1, 0u) < 0) ||
	    syscall(SYS_close_range, (unsigned)err_fd + 1, ~0u, 0u) < 0)
		goto failed;
	execve(path, argv, envp);
failed:
	e = errno;
	/* err_fd is CLOEXEC: EOF on it tells the parent execve succeeded. */
	if (write(err_fd, &e, sizeof e) < 0)
		_exit(126);
	_exit(127);
}

/* struct clone_args up to set_tid_size (CLONE_ARGS_SIZE_VER1, Linux 5.5). */
struct clone_args_v1 {
	uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size;
};

/*
 * fork() with the child's pid chosen: clone3 with set_tid, so a restored
 * process sees the pid its checkpoint was taken with. The raw syscall skips
 * glibc's fork bookkeeping; the child only makes plain system calls before
 * execve, which that bookkeeping does not affect.
 */
static pid_t fork_with_pid(pid_t want)
{
	pid_t tid = want;
	struct clone_args_v1 args;

	memset(&args, 0, sizeof args);
	args.exit_signal = SIGCHLD;
	args.set_tid = (uint64_t)(uintptr_t)&tid;
	args.set_tid_size = 1;
	return (pid_t)syscall(__NR_clone3, &args, sizeof args);
}

int spawn(struct call *c, uint32_t flags, pid_t want, const char *path, char **argv, char **envp,
		 const char *out_path)
{
	int in_fd = -1, out_fd = -1, sync_p[2] = { -1, -1 }, err_p[2] = { -1, -1 };
	int rc = -1, st, child_errno;
	pid_t pid;

	in_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (in_fd < 0) {
		fail_errno(c, "open /dev/null");
		goto out;
	}
	/* Opened here rather than in the child so the error names the path. */
	out_fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (out_fd < 0) {
		fail_errno(c, "stdout_path: open %s", out_path);
		goto out;
	}
	if (pipe2(sync_p, O_CLOEXEC) < 0 || pipe2(err_p, O_CLOEXEC) < 0) {
		fail_errno(c, "pipe2");
		goto out;
	}
	pid = want ? fork_with_pid(want) : fork();
	if (pid < 0 && want && errno == EEXIST) {
		fail(c, EEXIST, "pid: %d is in use by another process", (int)want);
		goto out;
	}
	if (pid < 0) {
		/* EPERM: set_tid needs CAP_CHECKPOINT_RESTORE; ENOSYS: kernel < 5.5. */
		fail_errno(c, want ? "clone3 with set_tid %d" : "fork", (int)want);
		goto out;
	}
	if (pid == 0)
		spawn_child(sync_p[0], err_p[1], in_fd, out_fd, flags, path, argv, envp);

	close(err_p[1]);
	err_p[1] = -1;
	/* Tracked from here on, so every failure below reaps it in one place. */
	if (!task_add(pid, pid, false)) {
		fail(c, ENOMEM, "out of memory tracking pid %d", (int)pid);
		kill(pid, SIGKILL);
		while (waitpid(pid, &st, __WALL) < 0 && errno == EINTR)
			;
		goto out;
	}
	/* TRACECLONE: every thread the program creates is traced from its start. */
	if (ptrace(PTRACE_SEIZE, pid, 0,
		   (void *)(long)(PTRACE_O_EXITKILL | PTRACE_O_TRACEEXEC | PTRACE_O_TRACESYSGOOD |
				  PTRACE_O_TRACECLONE)) < 0) {
		fail_errno(c, "PTRACE_SEIZE %d", (int)pid);
		kill_and_reap(pid, NULL);
		goto out;
	}
	if (write(sync_p[1], "g", 1) != 1) {
		fail_errno(c, "releasing the child");
		kill_and_reap(pid, NULL);
		goto out;
	}

	/* Waiting comes before reading err_p: a signal stop before execve would
	 * otherwise leave both sides blocked. */
	for (;;) {
		int sig = 0;

		if (wait_for(pid, &st) < 0) {
			fail_errno(c, "waitpid %d", (int)pid);
			kill_and_reap(pid, NULL);
			goto out;
		}
		if (WIFEXITED(st) || WIFSIGNALED(st)) {
			if (read(err_p[0], &child_errno, sizeof child_errno) == (ssize_t)sizeof child_errno)
				fail(c, child_errno, "exec %s: %s", path, strerror(child_errno));
			else
				fail(c, ECHILD, "child died before exec (wait status 0x%x)", st);
			goto out;
		}
		if (st >> 8 == EXEC_STOP)
			break;
		if (st >> 16 == 0 && WSTOPSIG(st) != SYSCALL_STOP)
			sig = WSTOPSIG(st);
		if (ptrace(PTRACE_CONT, pid, 0, (void *)(long)sig) < 0) {
			fail_errno(c, "PTRACE_CONT %d before exec", (int)pid);
			kill_and_reap(pid, NULL);
			goto out;
		}
	}

	/* At the execve syscall-exit stop registers are the new program's entry
	 * state and setting them decides what it resumes with; at the exec event
	 * the syscall's return path would still overwrite rax. */
	if (ptrace(PTRACE_SYSCALL, pid, 0, 0) < 0 || wait_for(pid, &st) < 0) {
		fail_errno(c, "stepping %d to the execve syscall-exit stop", (int)pid);
		kill_and_reap(pid, NULL);
		goto out;
	}
	if (!WIFSTOPPED(st) || st >> 8 != SYSCALL_STOP) {
		fail(c, EPROTO, "expected the execve syscall-exit stop, got wait status 0x%x", st);
		kill_and_reap(pid, NULL);
		goto out;
	}
	wr_u32(&c->out, (uint32_t)pid);
	rc = 0;
out:
	if (in_fd >= 0)
		close(in_fd);
	if (out_fd >= 0)
		close(out_fd);
	for (int i = 0; i < 2; i++) {
		if (sync_p[i] >= 0)
			close(sync_p[i]);
		if (err_p[i] >= 0)
			close(err_p[i]);
	}
	return rc;
}

/*
 * The agent is a child subreaper (main): a program that daemonizes leaves
 * its daemon to the agent when its parent exits, so a run's leftovers stay
 * findable below the agent (the host kills them between runs). Their
 * zombies are reaped here, before each SPAWN, so none keeps a pid taken;
 * tracked tasks are left to the waits that expect them.
 */
void reap_orphans(void)
{
	char path[64];
	FILE *f;
	int child, st;

	snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)getpid());
	f = fopen(path, "re");
	if (!f)
		return;
	while (fscanf(f, "%d", &child) == 1)
		if (!is_tracked(child))
			waitpid(child, &st, __WALL | WNOHANG);
	fclose(f);
}

int op_spawn(struct call *c)
{
	uint32_t flags = rd_u32(&c->in, "flags");
	char *path = rd_cstr(&c->in, "path");
	char **argv = rd_strv(&c->in, "argv");
	char **envp = rd_strv(&c->in, "envp");
	char *out_path = rd_cstr(&c->in, "stdout_path");
	/* The pid field exists only with its flag, so older requests stay valid. */
	pid_t want = flags & SPAWN_EXACT_PID ? rd_pid(&c->in) : 0;
	int rc = -1;

	if (parsed(c))
		goto out;
	reap_orphans();
	if (flags & ~(SPAWN_NO_ASLR | SPAWN_EXACT_PID)) {
		fail(c, EINVAL, "flags: unknown bits 0x%x", flags & ~(SPAWN_NO_ASLR | SPAWN_EXACT_PID));
		goto out;
	}
	rc = spawn(c, flags, want, path, argv, envp, out_path);
out:
	free(path);
	strv_free(argv);
	strv_free(envp);
	free(out_path);
	return rc;
}
