/*
 * protocol.h: our own implementation of the ZDTM test protocol, the one
 * CRIU's regression tests follow (facts in docs/zdtm.md; no ZDTM code here).
 * A test written against it is started as
 *
 *   TEST --pidfile=T.pid --outfile=T.out [ARGS]
 *
 * and goes through three steps:
 *
 *   zp_init(argc, argv)   parse the two options, open T.out.inprogress
 *                         (O_APPEND) as fds 1 and 2, fd 0 on /dev/null, a
 *                         directory fd on the working directory, a SIGTERM
 *                         handler, one MAP_SHARED page; then fork. The
 *                         parent (the launcher) waits on the shared page
 *                         until the child is ready, writes the child's pid
 *                         to T.pid and exits 0. Only the child returns.
 *   ... the test sets up its state ...
 *   zp_daemon()           the child says it is ready (setsid first). From
 *                         here on it may be checkpointed at any moment.
 *   zp_waitsig() or       wait for SIGTERM;
 *   while (zp_go()) ...   or work until SIGTERM arrives.
 *   zp_pass() / zp_fail() the verdict line, on fd 2 (the outfile).
 *
 * On exit the outfile is renamed from T.out.inprogress to T.out, but only
 * if the pid is still the one the test started with: a restore that gave
 * the test another pid leaves the .inprogress name.
 */
#ifndef ZDTM_PROTOCOL_H
#define ZDTM_PROTOCOL_H

#include <stdint.h>

/* Parses the protocol's options and forks; returns (in the daemon) the
 * index of the first test argument in argv. */
int zp_init(int argc, char **argv);
/* The daemon is ready: setsid, then wake the launcher. */
void zp_daemon(void);
/* Nonzero until SIGTERM has arrived. */
int zp_go(void);
/* Blocks (FUTEX_WAIT) until SIGTERM has arrived. */
void zp_waitsig(void);
/* A line on the outfile (fd 2). */
void zp_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The verdict line, "PASS" or "FAIL: why". */
void zp_pass(void);
void zp_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The shared page (MAP_SHARED | MAP_ANONYMOUS) the launcher and daemon
 * share; its first word is the readiness futex. Tests may check it. */
extern volatile uint32_t *zp_shared;
/* The directory descriptor on the working directory, kept open. */
extern int zp_dirfd;

#endif
