/*
 * RUN and STEP: the state machine that lets a process's threads go, counts
 * breakpoint hits, delivers the program's own signals and stops every thread
 * again; and STEP, single instructions of one thread.
 */
#include "agent.h"

/* What RUN collects: hits and signals of every thread, and which hit reached the limit. */
struct run_log {
	struct wr hits, sigs;
	uint32_t nhits, nsigs, limit;
	pid_t limit_tid;
};

enum { EV_EXITED, EV_HIT, EV_SIGNAL, EV_STOP, EV_OTHER };

/*
 * Classifies one wait status of thread `tid` of process `tgid` and does the
 * bookkeeping every stop needs: a clone event adds the new task (it comes
 * with a first stop of its own), an exec event forgets the exec'ing thread's
 * former tid, a hardware-breakpoint hit is recorded and DR6 cleared, any
 * other signal-delivery stop is recorded and its signal put in *deliver.
 * Returns EV_EXITED (a termination), EV_HIT, EV_SIGNAL, EV_STOP
 * (PTRACE_EVENT_STOP: an interrupt, a group-stop or a new thread's first
 * stop) or EV_OTHER (any other event or a stray syscall stop), or -1 after
 * fail(). ESRCH from ptrace means the thread was killed in its stop (a group
 * exit in another thread): its termination follows, so it is no error.
 */
static int classify(struct call *c, pid_t tgid, pid_t tid, int st, struct run_log *log, int *deliver)
{
	struct user_regs_struct regs;
	unsigned long msg;
	uint64_t dr6;
	int event = st >> 16, stopsig;

	*deliver = 0;
	if (WIFEXITED(st) || WIFSIGNALED(st))
		return EV_EXITED;
	stopsig = WSTOPSIG(st);
	if (event == PTRACE_EVENT_CLONE) {
		pid_t child, group;

		if (ptrace(PTRACE_GETEVENTMSG, tid, 0, &msg) < 0)
			return errno == ESRCH ? EV_OTHER : fail_errno(c, "PTRACE_GETEVENTMSG %d", (int)tid);
		child = (pid_t)msg;
		/* A clone without CLONE_THREAD is a new process, traced too. */
		group = tgid_of(child);
		if (!task_add(child, group > 0 ? group : tgid, false))
			return fail(c, ENOMEM, "out of memory tracking thread %d", (int)child);
		return EV_OTHER;
	}
	if (event == PTRACE_EVENT_EXEC) {
		/* The exec'ing thread took the leader's tid; its own vanished
		 * without an exit report. The other threads report theirs. */
		if (ptrace(PTRACE_GETEVENTMSG, tid, 0, &msg) == 0 && (pid_t)msg != tid)
			task_remove((pid_t)msg);
		return EV_OTHER;
	}
	if (event == PTRACE_EVENT_STOP)
		return EV_STOP;
	if (event || stopsig == SYSCALL_STOP)
		return EV_OTHER;
	if (ptrace(PTRACE_GETREGS, tid, 0, &regs) < 0)
		return errno == ESRCH ? EV_OTHER : fail_errno(c, "PTRACE_GETREGS %d at signal %d", (int)tid, stopsig);
	if (stopsig == SIGTRAP) {
		if (peek_user(tid, DR6_OFFSET, &dr6) < 0)
			return errno == ESRCH ? EV_OTHER : fail_errno(c, "PEEKUSER DR6 of %d", (int)tid);
		if (dr6 & DR_TRAP_BITS) {
			wr_u64(&log->hits, regs.rip);
			wr_u64(&log->hits, regs.eflags);
			wr_u64(&log->hits, dr6);
			wr_u32(&log->hits, (uint32_t)tid);
			log->nhits++;
			if (log->limit && log->nhits == log->limit)
				log->limit_tid = tid;
			/* Stale B0-B3 would make a later SIGTRAP from int3 or
			 * kill() look like a hit. */
			if (ptrace(PTRACE_POKEUSER, tid, (void *)DR6_OFFSET, 0) < 0 && errno != ESRCH)
				return fail_errno(c, "POKEUSER DR6 of %d", (int)tid);
			if (!legacy_traps && (dr6 & DR6_BS)) {
				/* The program's own single-step ended here too: its trap. */
				*deliver = SIGTRAP;
			} else {
				bool repaired;

				if (repair_trap_reset(c, tgid, tid, &repaired) < 0)
					return -1;
			}
			return EV_HIT;
		}
	}
	wr_u32(&log->sigs, (uint32_t)stopsig);
	wr_u64(&log->sigs, regs.rip);
	wr_u32(&log->sigs, (uint32_t)tid);
	log->nsigs++;
	*deliver = stopsig;
	return EV_SIGNAL;
}

/* How long the threads of a process get to reach a stop after PTRACE_INTERRUPT. */
#define STOP_ALL_TIMEOUT_MS 10000u

/*
 * The errno of a thread that did not reach a stop within STOP_ALL_TIMEOUT_MS
 * (a killable wait PTRACE_INTERRUPT cannot break, as a vfork parent's): the
 * thread may still run. Not ETIMEDOUT, which RUN answers only when every
 * thread was interrupted and left stopped, and which the host takes as that.
 */
#define NOT_STOPPED_ERRNO EBUSY

/* Whether the table holds a thread of `tgid` other than its leader. */
static bool has_other_threads(pid_t tgid)
{
	for (size_t i = 0; i < ntasks; i++)
		if (tasks[i].tgid == tgid && tasks[i].tid != tgid)
			return true;
	return false;
}

/*
 * Threads of `tgid` not yet in a collected stop. A zombie leader is excepted
 * while other threads remain (the kernel reports it only once they are
 * reaped), not when it is alone: then the whole process ended — between
 * RUN's last wait and the interrupts, say — and its exit is there to collect.
 */
static pid_t first_running(pid_t tgid)
{
	for (size_t i = 0; i < ntasks; i++)
		if (tasks[i].tgid == tgid && !tasks[i].stopped &&
		    !(tasks[i].tid == tgid && has_other_threads(tgid) && is_zombie(tgid)))
			return tasks[i].tid;
	return 0;
}

int interrupt(pid_t tid)
{
	return ptrace(PTRACE_INTERRUPT, tid, 0, 0) < 0 && errno != ESRCH ? -1 : 0;
}

/*
 * Brings every thread of process `tgid` into a ptrace stop, as a checkpoint
 * needs: PTRACE_INTERRUPT to each running thread, then their stops collected.
 * Whatever a thread reports first is handled as in RUN, except that it must
 * end stopped: a hit is recorded and the thread left in that SIGTRAP stop; a
 * signal is recorded and delivered, and the thread interrupted again (any
 * ptrace stop consumes a pending interrupt, and a signal left in a
 * signal-delivery stop would be in no queue a checkpoint reads); a clone
 * leaves the new thread in its first stop and its creator is interrupted
 * again; a thread that exits is reaped. *gone: the process ended meanwhile,
 * with the leader's wait status in *leader_status.
 */
static int stop_all(struct call *c, pid_t tgid, struct run_log *log, bool *gone, int *leader_status)
{
	struct timespec deadline;
	pid_t tid, late = 0;
	int st, kind, deliver;

	*gone = false;
	deadline_in(&deadline, STOP_ALL_TIMEOUT_MS);
	for (size_t i = 0; i < ntasks; i++)
		if (tasks[i].tgid == tgid && !tasks[i].stopped && interrupt(tasks[i].tid) < 0)
			return fail_errno(c, "PTRACE_INTERRUPT %d", (int)tasks[i].tid);
	/* A status stashed by deliver_sigtrap is the thread's next stop. */
	while (stashed.set || (late = first_running(tgid)) != 0) {
		int r = wait_any(tgid, &tid, &st, &deadline);

		if (r < 0)
			return fail_errno(c, "waitpid (process %d)", (int)tgid);
		if (r == 0)
			return fail(c, NOT_STOPPED_ERRNO,
				    "thread %d of process %d did not stop within %u ms of PTRACE_INTERRUPT (it may still run)",
				    (int)late, (int)tgid, STOP_ALL_TIMEOUT_MS);
		kind = classify(c, tgid, tid, st, log, &deliver);
		if (kind < 0)
			return -1;
		if (kind == EV_EXITED) {
			if (tid == tgid) {
				*gone = true;
				*leader_status = st;
				return 0;
			}
			continue;
		}
		if (kind == EV_STOP || (kind == EV_HIT && !deliver))
			continue;
		if (deliver == SIGTRAP) {
			/* Into its handler and left there: no signal held in a stop. */
			bool stopped;
			struct task *t;

			if (deliver_sigtrap(tid, true, &stopped) < 0 && errno != ESRCH)
				return fail_errno(c, "delivering SIGTRAP to %d", (int)tid);
			t = task_find(tid);
			if (stopped || !t || t->stopped)
				continue;
			if (interrupt(tid) < 0)
				return fail_errno(c, "interrupting %d again", (int)tid);
			continue;
		}
		if ((resume(tid, PTRACE_CONT, deliver) < 0 && errno != ESRCH) || interrupt(tid) < 0)
			return fail_errno(c, "resuming and interrupting %d again", (int)tid);
	}
	return 0;
}

/* The threads of `tgid`, ascending. */
void write_threads(struct wr *w, pid_t tgid)
{
	size_t at = wr_mark(w);
	uint32_t n = 0;
	pid_t last = 0;

	for (;;) {
		pid_t next = 0;

		for (size_t i = 0; i < ntasks; i++)
			if (tasks[i].tgid == tgid && tasks[i].tid > last && (!next || tasks[i].tid < next))
				next = tasks[i].tid;
		if (!next)
			break;
		wr_u32(w, (uint32_t)next);
		n++;
		last = next;
	}
	wr_patch_u32(w, at, n);
}

int op_run(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	uint32_t limit = rd_u32(&c->in, "stop_after_hits");
	uint32_t timeout_ms = rd_u32(&c->in, "timeout_ms");
	/* An optional trailing field: older hosts send none. */
	uint32_t flags = rd_left(&c->in) ? rd_u32(&c->in, "flags") : 0;
	struct run_log log = { .limit = limit };
	uint32_t outcome = 0;
	int32_t code = 0;
	struct timespec deadline;
	bool gone = false;
	int leader_st = 0, rc = -1;

	if (parsed(c))
		return -1;
	if (flags & ~RUN_LEGACY_TRAPS)
		return fail(c, EINVAL, "flags: unknown bits 0x%x", flags & ~RUN_LEGACY_TRAPS);
	if (!is_tracked(pid))
		return fail(c, ESRCH, "pid: %d is not a process this agent spawned (or it was already reaped)", (int)pid);
	legacy_traps = flags & RUN_LEGACY_TRAPS;
	deadline_in(&deadline, timeout_ms);

	/* Every thread, with signal 0: whatever stop it is in (a hit's SIGTRAP
	 * included) is not delivered. A thread killed in its stop meanwhile
	 * (ESRCH) reports its end below. */
	for (size_t i = 0; i < ntasks; i++)
		if (tasks[i].tgid == pid && tasks[i].stopped && resume(tasks[i].tid, PTRACE_CONT, 0) < 0 &&
		    errno != ESRCH)
			return fail_errno(c, "PTRACE_CONT %d", (int)tasks[i].tid);

	for (;;) {
		pid_t tid;
		int st, kind, deliver, r;

		r = wait_any(pid, &tid, &st, timeout_ms ? &deadline : NULL);
		if (r < 0) {
			fail_errno(c, "waitpid (process %d)", (int)pid);
			goto out;
		}
		if (r == 0) {
			/* Stops already queued ahead of the interrupts are handled
			 * as usual: the process may genuinely exit or reach the limit. */
			if (stop_all(c, pid, &log, &gone, &leader_st) < 0)
				goto out;
			if (gone || log.limit_tid)
				break;
			fail(c, ETIMEDOUT, "timed out after %u ms; every thread of process %d interrupted and left stopped "
			     "(%u hits and %u signals seen)", timeout_ms, (int)pid, log.nhits, log.nsigs);
			goto out;
		}
		kind = classify(c, pid, tid, st, &log, &deliver);
		if (kind < 0)
			goto out;
		if (kind == EV_EXITED) {
			if (tid != pid)
				continue; /* a thread's end; the leader reports last */
			gone = true;
			leader_st = st;
			break;
		}
		if (kind == EV_HIT && log.limit_tid) {
			bool stopped;

			/* A hit that is also the program's step: its trap delivered,
			 * the thread left at its handler's first instruction. */
			if (deliver && deliver_sigtrap(tid, true, &stopped) < 0 && errno != ESRCH) {
				fail_errno(c, "delivering SIGTRAP to %d", (int)tid);
				goto out;
			}
			if (stop_all(c, pid, &log, &gone, &leader_st) < 0)
				goto out;
			break;
		}
		if (deliver == SIGTRAP) {
			bool stopped;

			if (deliver_sigtrap(tid, false, &stopped) < 0 && errno != ESRCH) {
				fail_errno(c, "delivering SIGTRAP to %d", (int)tid);
				goto out;
			}
			continue;
		}
		/* A new thread's first stop, group-stops, other events, stray
		 * syscall stops: continue; a signal is delivered. */
		if (resume(tid, PTRACE_CONT, deliver) < 0 && errno != ESRCH) {
			fail_errno(c, "PTRACE_CONT %d", (int)tid);
			goto out;
		}
	}

	if (gone) {
		outcome = WIFEXITED(leader_st) ? RUN_EXITED : RUN_KILLED;
		code = WIFEXITED(leader_st) ? WEXITSTATUS(leader_st) : WTERMSIG(leader_st);
	} else {
		outcome = RUN_HIT_LIMIT;
	}
	wr_u32(&c->out, outcome);
	wr_le(&c->out, (uint32_t)code, 4);
	wr_u32(&c->out, log.nhits);
	wr_raw(&c->out, log.hits.p, log.hits.len);
	wr_u32(&c->out, log.nsigs);
	wr_raw(&c->out, log.sigs.p, log.sigs.len);
	wr_u32(&c->out, gone ? 0u : (uint32_t)log.limit_tid);
	if (gone)
		wr_u32(&c->out, 0);
	else
		write_threads(&c->out, pid);
	c->out.oom |= log.hits.oom || log.sigs.oom;
	rc = 0;
out:
	legacy_traps = false;
	wr_free(&log.hits);
	wr_free(&log.sigs);
	return rc;
}

/* More steps than this in one request is refused: a sequence that long is a RUN. */
#define MAX_STEPS 65536u

/*
 * After STEP's deadline: the stepped thread is interrupted and its stop
 * collected, so it is left stopped as every thread between requests is. A
 * signal it stops with first is delivered and the thread interrupted again
 * (as when stopping every thread for RUN); a step's SIGTRAP, or the
 * interrupt's own stop, leaves it there. Returns -1 with errno.
 */
static int step_interrupt(pid_t tgid, pid_t tid)
{
	struct timespec deadline;
	pid_t who;
	int st, r;

	deadline_in(&deadline, STOP_ALL_TIMEOUT_MS);
	if (interrupt(tid) < 0)
		return -1;
	for (;;) {
		r = wait_any(tgid, &who, &st, &deadline);
		if (r < 0)
			return -1;
		if (r == 0) {
			errno = NOT_STOPPED_ERRNO;
			return -1;
		}
		if (who != tid)
			continue;
		if (WIFEXITED(st) || WIFSIGNALED(st))
			return 0;
		if (st >> 16 == 0 && WSTOPSIG(st) != SIGTRAP && WSTOPSIG(st) != SYSCALL_STOP) {
			if (resume(tid, PTRACE_CONT, WSTOPSIG(st)) < 0 || interrupt(tid) < 0)
				return -1;
			continue;
		}
		return 0;
	}
}

/*
 * PTRACE_SINGLESTEP of one stopped thread, `count` times, each stop
 * collected before the next step; the other threads stay stopped. Every
 * SIGTRAP stop of the thread is one step and is recorded (rip, eflags as
 * GETREGS reads them, DR6 before it is cleared) and not delivered; event
 * stops (a clone, an exec, an interrupt or group-stop) are stepped on
 * without counting. It ends after `count` steps, at the first other
 * signal (the thread left in that signal-delivery stop, the signal not
 * delivered: the host may pass it as `signo` of the next STEP), or when
 * the thread ends. A thread the program creates meanwhile is left in its
 * first stop.
 */
int op_step(struct call *c)
{
	pid_t tid = rd_pid(&c->in);
	uint32_t count = rd_u32(&c->in, "count");
	uint32_t sig = rd_u32(&c->in, "signo");
	uint32_t timeout_ms = rd_u32(&c->in, "timeout_ms");
	struct wr steps = { 0 };
	uint32_t nsteps = 0, outcome = 0;
	int32_t code = 0;
	uint64_t where = 0;
	struct timespec deadline;
	struct task *t;
	pid_t tgid, late;
	int rc = -1;

	if (parsed(c))
		return -1;
	if (count == 0 || count > MAX_STEPS)
		return fail(c, EINVAL, "count: %u (1 to %u steps)", count, MAX_STEPS);
	if (sig >= NSIG)
		return fail(c, EINVAL, "signo: %u is not a signal number", sig);
	t = task_find(tid);
	/* Only a thread in a stop this agent collected: waiting for anything
	 * else could block for ever, or reap someone else's child. */
	if (!t || !t->stopped)
		return fail(c, ESRCH, "pid: %d is not a stopped thread of a process this agent spawned", (int)tid);
	tgid = t->tgid;
	deadline_in(&deadline, timeout_ms);

	while (!outcome) {
		struct user_regs_struct regs;
		unsigned long msg;
		uint64_t dr6;
		pid_t who;
		int st, r, event;

		if (resume(tid, PTRACE_SINGLESTEP, (int)sig) < 0) {
			fail_errno(c, "PTRACE_SINGLESTEP %d (after %u of %u steps)", (int)tid, nsteps, count);
			goto out;
		}
		sig = 0;
		for (;;) {
			r = wait_any(tgid, &who, &st, timeout_ms ? &deadline : NULL);
			if (r < 0) {
				fail_errno(c, "waitpid (thread %d, after %u of %u steps)", (int)tid, nsteps, count);
				goto out;
			}
			if (r == 0) {
				int err = step_interrupt(tgid, tid) < 0 ? errno : 0;

				/* ETIMEDOUT only when the thread is left stopped, as RUN's. */
				fail(c, err ? err : ETIMEDOUT, "timed out after %u ms in step %u of %u of thread %d; %s",
				     timeout_ms, nsteps + 1, count, (int)tid,
				     err ? strerror(err) : "the thread was interrupted and left stopped");
				goto out;
			}
			/* A non-leader thread that execs takes the leader's tid; its
			 * exec event is reported under that tid. */
			if (who != tid && st >> 8 == EXEC_STOP && ptrace(PTRACE_GETEVENTMSG, who, 0, &msg) == 0 &&
			    (pid_t)msg == tid) {
				task_remove(tid);
				tid = who;
			}
			if (who == tid)
				break;
			/* Another thread: one that ended (reaped), or a new thread's
			 * first stop (it stays in it). */
		}
		if (WIFEXITED(st) || WIFSIGNALED(st)) {
			outcome = WIFEXITED(st) ? STEP_EXITED : STEP_KILLED;
			code = WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st);
			break;
		}
		event = st >> 16;
		if (event == PTRACE_EVENT_CLONE) {
			pid_t child, group;

			if (ptrace(PTRACE_GETEVENTMSG, tid, 0, &msg) < 0) {
				fail_errno(c, "PTRACE_GETEVENTMSG %d", (int)tid);
				goto out;
			}
			child = (pid_t)msg;
			group = tgid_of(child);
			if (!task_add(child, group > 0 ? group : tgid, false)) {
				fail(c, ENOMEM, "out of memory tracking thread %d", (int)child);
				goto out;
			}
			continue;
		}
		if (event == PTRACE_EVENT_EXEC) {
			if (ptrace(PTRACE_GETEVENTMSG, tid, 0, &msg) == 0 && (pid_t)msg != tid)
				task_remove((pid_t)msg);
			continue;
		}
		if (event || WSTOPSIG(st) == SYSCALL_STOP)
			continue;
		if (ptrace(PTRACE_GETREGS, tid, 0, &regs) < 0) {
			fail_errno(c, "PTRACE_GETREGS %d after step %u", (int)tid, nsteps + 1);
			goto out;
		}
		where = regs.rip;
		if (WSTOPSIG(st) != SIGTRAP) {
			outcome = STEP_SIGNAL;
			code = WSTOPSIG(st);
			break;
		}
		if (peek_user(tid, DR6_OFFSET, &dr6) < 0) {
			fail_errno(c, "PEEKUSER DR6 of %d after step %u", (int)tid, nsteps + 1);
			goto out;
		}
		/* As after a RUN hit: stale bits would make a later SIGTRAP that
		 * is no debug exception (int3, kill) look like one. */
		if (dr6 && ptrace(PTRACE_POKEUSER, tid, (void *)DR6_OFFSET, 0) < 0) {
			fail_errno(c, "POKEUSER DR6 of %d", (int)tid);
			goto out;
		}
		wr_u64(&steps, regs.rip);
		wr_u64(&steps, regs.eflags);
		wr_u64(&steps, dr6);
		if (++nsteps == count)
			outcome = STEP_DONE;
	}

	/* Threads created meanwhile: collected in their first stop, so the next
	 * request may address them. */
	while ((late = first_running(tgid)) != 0 && late != tid) {
		int st;

		if (wait_for(late, &st) < 0) {
			fail_errno(c, "waitpid for the first stop of new thread %d", (int)late);
			goto out;
		}
	}
	wr_u32(&c->out, outcome);
	wr_le(&c->out, (uint32_t)code, 4);
	wr_u32(&c->out, nsteps);
	wr_raw(&c->out, steps.p, steps.len);
	wr_u64(&c->out, outcome == STEP_DONE || outcome == STEP_SIGNAL ? where : 0);
	c->out.oom |= steps.oom;
	rc = 0;
out:
	wr_free(&steps);
	return rc;
}
