/*
 * The agent's opcodes, defined once: AGENT_OPCODES(X) expands X(code, NAME, name)
 * for each, NAME as docs/agent-protocol.md and harness/agent/ops.ts spell it
 * and op_<name> the C function that serves it. test/agent-opcodes.test.ts
 * fails when ops.ts or the protocol document disagree with this list.
 */
#ifndef CRH_AGENT_OPCODES_H
#define CRH_AGENT_OPCODES_H

#define AGENT_OPCODES(X) \
	X(0x01, HELLO, hello) \
	X(0x02, SPAWN, spawn) \
	X(0x03, RUN, run) \
	X(0x04, GETREGS, getregs) \
	X(0x05, SETREGS, setregs) \
	X(0x06, GETREGSET, getregset) \
	X(0x07, SETREGSET, setregset) \
	X(0x08, PEEKUSER, peekuser) \
	X(0x09, POKEUSER, pokeuser) \
	X(0x0a, READ_FILE, read_file) \
	X(0x0b, READ_MEM, read_mem) \
	X(0x0c, WRITE_MEM, write_mem) \
	X(0x0d, INJECT_SYSCALL, inject_syscall) \
	X(0x0e, KILL, kill) \
	X(0x0f, BATCH, batch) \
	X(0x10, RSEQ_CONFIG, rseq_config) \
	X(0x11, SIGNAL, signal) \
	X(0x18, PEEKSIGINFO, peeksiginfo) \
	X(0x19, GETSIGMASK, getsigmask) \
	X(0x1a, SETSIGMASK, setsigmask) \
	X(0x1b, READLINK, readlink) \
	X(0x1c, LISTDIR, listdir) \
	X(0x1d, STEP, step) \
	X(0x1e, DETACH, detach) \
	X(0x1f, REAP, reap) \
	X(0x20, ATTACH, attach) \
	X(0x21, BULK_OPEN, bulk_open) \
	X(0x22, READ_MEM_BULK, read_mem_bulk) \
	X(0x23, WRITE_MEM_BULK, write_mem_bulk) \
	X(0x24, PAGEMAP, pagemap) \
	X(0x25, PAGE_FRAMES, page_frames) \
	X(0x26, CHDIR, chdir) \
	X(0x27, RESEED, reseed) \
	X(0x28, TRACE_FORKS, trace_forks) \
	X(0x29, RELEASE, release) \
	X(0x2a, REAP_ORPHANS, reap_orphans) \
	X(0x2b, KMSG, kmsg)

#endif
