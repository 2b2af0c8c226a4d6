/*
 * What the parts of crh-agent share: the protocol constants, the payload
 * reader and writer, the call, the task table, and the functions one part
 * calls in another (each defined in the file named above its group).
 */
#ifndef CRH_AGENT_H
#define CRH_AGENT_H

#define _GNU_SOURCE
#include "opcodes.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <limits.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROTOCOL_VERSION 1u
#define MAX_FRAME (256u * 1024u * 1024u)
/* Bulk data must leave room for the frame header and the fields around it. */
#define MAX_DATA (MAX_FRAME - 4096u)

#define SPAWN_NO_ASLR 1u
#define SPAWN_EXACT_PID 2u

#ifndef __NR_clone3
#define __NR_clone3 435
#endif

#define DR_TRAP_BITS 0xfull /* B0-B3 of DR6 */
#define DR6_BS 0x4000ull /* DR6.BS: the #DB was a single-step trap */
#define DR6_OFFSET offsetof(struct user, u_debugreg[6])
#define X86_EFLAGS_TF 0x100ull

#define SYSCALL_STOP (SIGTRAP | 0x80)
#define EXEC_STOP (SIGTRAP | (PTRACE_EVENT_EXEC << 8))

/* OP_HELLO, OP_SPAWN, ...: the opcodes, from the one list in opcodes.h. */
enum {
#define AGENT_OP(code, NAME, name) OP_##NAME = code,
	AGENT_OPCODES(AGENT_OP)
#undef AGENT_OP
};

/* RUN's flag 1: every hit's SIGTRAP suppressed, as before breakpoints.c. */
#define RUN_LEGACY_TRAPS 1u

enum { RUN_HIT_LIMIT = 1, RUN_EXITED = 2, RUN_KILLED = 3 };
enum { STEP_DONE = 1, STEP_SIGNAL = 2, STEP_EXITED = 3, STEP_KILLED = 4 };

struct task {
	pid_t tid;
	pid_t tgid;
	bool stopped;
	/* The process's SIGTRAP handler, as seen at a handler entry RUN stepped
	 * into (0: none seen): what a hit's forced SIGTRAP may have reset. */
	uint64_t trap_handler;
};

/* A wait status collected out of turn, to be returned by the next wait_any (tracee.c). */
struct stashed_status {
	pid_t tid;
	int status;
	bool set;
};

struct rd {
	const uint8_t *p;
	size_t len, off;
	char err[200];
};

struct wr {
	uint8_t *p;
	size_t len, cap;
	bool oom;
};

struct call {
	struct rd in;
	struct wr out;
	int err; /* 0 = success; otherwise the errno sent with status 1 */
	char msg[512];
};

/* One per opcode: op_hello serves OP_HELLO, and so on. Each reads its
 * fields from c->in, writes its response to c->out, and returns 0 or, after
 * fail(), -1. */
#define AGENT_OP(code, NAME, name) int op_##name(struct call *c);
AGENT_OPCODES(AGENT_OP)
#undef AGENT_OP

/* breakpoints.c */
int deliver_sigtrap(pid_t tid, bool leave_stopped, bool *stopped);
int repair_trap_reset(struct call *c, pid_t tgid, pid_t tid, bool *repaired);
extern bool legacy_traps;

/* bulk.c */
void bulk_skip_frame(void);

/* port.c */
int open_virtio_port(const char *name);
/* Serves each connection to the port `name` with a forked `session` (main.c's
 * serve_session, passed in so that port.c depends on no caller). */
int serve_port(const char *name, int (*session)(void));
/* main.c: one session on stdin/stdout, until end of input; never returns */
int __attribute__((noreturn)) serve_session(void);

/* handoff.c */
void kill_detached(void);

/* main.c */
uint16_t execute(uint16_t op, struct call *c, bool nested);

/* memory.c */
int peek_user(pid_t pid, uint64_t off, uint64_t *val);
int peek_data(pid_t pid, uint64_t addr, uint64_t *val);
int poke_data(pid_t pid, uint64_t addr, uint64_t val);
int word_window(pid_t pid, uint64_t addr, size_t n, uint64_t *base, uint64_t *word);
int poke_bytes(pid_t pid, uint64_t addr, const uint8_t *src, size_t n);
int open_mem(pid_t pid, int flags);
bool range_wraps(uint64_t addr, uint64_t len);
int write_through_mem(int fd, pid_t pid, uint64_t addr, const uint8_t *data, size_t n, size_t *written);

/* primitives.c */

/* run.c */
int interrupt(pid_t tid);
void write_threads(struct wr *w, pid_t tgid);

/* spawn.c */
int spawn(struct call *c, uint32_t flags, pid_t want, const char *path, char **argv, char **envp,
	  const char *out_path);
void reap_orphans(void);

/* tracee.c */
struct task *task_find(pid_t tid);
bool is_tracked(pid_t pid);
bool task_add(pid_t tid, pid_t tgid, bool stopped);
void task_remove(pid_t tid);
int resume(pid_t tid, int request, int sig);
pid_t tgid_of(pid_t tid);
bool is_zombie(pid_t tid);
int scan_status(pid_t tid, bool (*scan)(const char *line, void *arg), void *arg);
int wait_for(pid_t pid, int *status);
void stash_status(pid_t tid, int status);
int wait_any(pid_t tgid, pid_t *tid, int *status, const struct timespec *deadline);
void deadline_in(struct timespec *deadline, uint32_t ms);
void forget_process(pid_t pid);
int kill_and_reap(pid_t pid, int *status);
void kill_all(void);
extern struct task *tasks;
extern size_t ntasks;
extern sigset_t sigchld_set;
extern struct stashed_status stashed;

/* wire.c */
int __attribute__((format(printf, 3, 4))) fail(struct call *c, int err, const char *fmt, ...);
int __attribute__((format(printf, 2, 3))) fail_errno(struct call *c, const char *fmt, ...);
size_t rd_left(const struct rd *r);
uint16_t rd_u16(struct rd *r, const char *field);
uint32_t rd_u32(struct rd *r, const char *field);
uint64_t rd_u64(struct rd *r, const char *field);
const uint8_t *rd_bytes(struct rd *r, const char *field, uint32_t *n);
char *rd_cstr(struct rd *r, const char *field);
uint32_t rd_count(struct rd *r, const char *field, size_t min_elem);
void strv_free(char **v);
char **rd_strv(struct rd *r, const char *field);
pid_t rd_pid(struct rd *r);
uint8_t *wr_grow(struct wr *w, size_t n);
void put_le(uint8_t *p, uint64_t v, unsigned n);
void wr_le(struct wr *w, uint64_t v, unsigned n);
void wr_u16(struct wr *w, uint16_t v);
void wr_u32(struct wr *w, uint32_t v);
void wr_u64(struct wr *w, uint64_t v);
void wr_raw(struct wr *w, const void *data, size_t n);
void wr_bytes(struct wr *w, const void *data, size_t n);
void wr_str(struct wr *w, const char *s);
size_t wr_mark(struct wr *w);
void wr_patch_u32(struct wr *w, size_t at, uint32_t v);
void wr_free(struct wr *w);
int parsed(struct call *c);
uint16_t finish(struct call *c);
ssize_t read_full(int fd, void *buf, size_t n);
int write_full(int fd, const void *buf, size_t n);

#endif
