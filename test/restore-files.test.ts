// expect: open descriptors are read from /proc (fdinfo flags are octal, the session is read after the parenthesised name
// however odd the name), only files, directories and harmless devices are admitted, each field of task.json is checked,
// and the plan reopens every file at its own number — predicting which descriptor open() returns, moving it with dup3
// when needed — without O_CREAT/O_TRUNC side effects, with its offset, and leads its session again with setsid.
import t from 'tap';
import { ImageRejectedError } from '../harness/errors.ts';
import { fileKind, fileSteps, O, parseFdinfo, parseStatSession, parseUmask, sessionSteps, umaskSteps } from '../harness/restore/files.ts';
import type { OpenFile } from '../harness/restore/image-model.ts';
import { compileRestorePlan } from '../harness/restore/plan.ts';
import { parseMaps } from '../harness/restore/proc-maps.ts';
import { validateTask } from '../harness/restore/validate.ts';
import { SYNTHETIC_MAPS, syntheticImage, syntheticRegs } from './support/synthetic-image.ts';

t.test('/proc parsing', async (t) => {
  t.same(parseFdinfo('pos:\t12\nflags:\t0100001\nmnt_id:\t21\nino:\t5\n'), { pos: 12n, flags: 0o100001 });
  t.throws(() => parseFdinfo('flags:\t01\n'), /unreadable fdinfo/);
  t.same(parseStatSession('113 (daemon) S 1 113 113 0 -1 4194560 ...'), { pgid: 113, sid: 113 });
  t.same(parseStatSession('7 (a) b) (c) R 1 5 6 0'), { pgid: 5, sid: 6 }, 'a name with ") (" in it');
  t.equal(fileKind('/tmp/x.log', O.WRONLY), 'file');
  t.equal(fileKind('/tmp', O.DIRECTORY), 'directory');
  t.equal(fileKind('/dev/null', O.RDWR), 'device');
  for (const bad of ['pipe:[1234]', 'socket:[9]', 'anon_inode:[eventfd]', '/tmp/gone (deleted)', '/dev/sda', '/proc/1/mem'])
    t.equal(fileKind(bad, 0), undefined, `${bad} is refused`);
});

const log: OpenFile = { fd: 3, path: '/tmp/d.log', flags: O.WRONLY | O.LARGEFILE | O.CREAT | O.TRUNC, pos: 42n, kind: 'file' };
const dir: OpenFile = { fd: 7, path: '/tmp', flags: O.DIRECTORY | O.LARGEFILE | O.CLOEXEC, pos: 99n, kind: 'directory' };

t.test('plan: each file at its own number, no side effects, offsets', async (t) => {
  const steps = fileSteps(5, [log, dir], [0, 1, 2], 0x1000_0000_0000n);
  const calls = steps
    .filter((s) => s.op.op === 'INJECT_SYSCALL')
    .map((s) => ({ nr: (s.op as { nr: number }).nr, args: (s.op as { args: readonly bigint[] }).args, expect: s.expect }));
  t.same(
    calls.map((c) => c.nr),
    [9, 257, 8, 257, 292, 3, 11],
    'mmap, open(3), lseek, open(4), dup3 to 7, close 4, munmap',
  );
  t.equal(calls[1]!.expect, 3n, 'open() returns the lowest free descriptor: 3');
  t.equal(Number(calls[1]!.args[2]) & (O.CREAT | O.TRUNC), 0, 'O_CREAT and O_TRUNC are never passed again');
  t.same(calls[2]!.args.slice(0, 3), [3n, 42n, 0n], 'lseek(3, 42, SEEK_SET)');
  t.same([calls[3]!.expect, calls[4]!.args, calls[4]!.expect], [4n, [4n, 7n, BigInt(O.CLOEXEC)], 7n], 'the directory lands on 4 and moves to 7 with O_CLOEXEC');
  t.notOk(
    calls.some((c) => c.nr === 8 && c.args[0] === 7n),
    'a directory offset is not set',
  );
  const paths = steps.find((s) => s.op.op === 'WRITE_MEM')!.op as { data: Uint8Array };
  t.equal(Buffer.from(paths.data).toString(), '/tmp/d.log\0/tmp\0');
  t.same(fileSteps(5, [], [0, 1, 2], 0n), [], 'nothing to open, nothing injected');
  t.equal(
    fileSteps(5, [{ ...log, fd: 4 }], [0, 1, 2, 3], 0n).find((s) => (s.op as { nr?: number }).nr === 257)!.expect,
    4n,
    'an fd the target already has is skipped over',
  );
  t.throws(() => fileSteps(5, [{ ...log, fd: 9 }], [0, 1, 2, 9], 0n), /already open/);
});

t.test('session: a session leader leads again; a group leader leads its group', async (t) => {
  t.same(
    sessionSteps(8, 113, { pgid: 113, sid: 113, files: [] }).map((s) => [(s.op as { nr: number }).nr, s.expect]),
    [[112, 8n]],
  );
  t.same(
    sessionSteps(8, 113, { pgid: 113, sid: 1, files: [] }).map((s) => (s.op as { nr: number }).nr),
    [109],
  );
  t.same(sessionSteps(8, 113, { pgid: 1, sid: 1, files: [] }), []);
  const probe = { pid: 8, regs: syntheticRegs({ eflags: 0x202n }), maps: parseMaps(SYNTHETIC_MAPS), fds: [0, 1, 2] };
  const image = syntheticImage({ task: { pgid: 42, sid: 42, files: [log] } });
  t.ok(
    compileRestorePlan(image, probe, { rf: 'keep' }).some((s) => (s.op as { nr?: number }).nr === 112),
    'the plan has the setsid',
  );
  t.notOk(
    compileRestorePlan(image, probe, { rf: 'keep', omit: ['files'] }).some((s) => [112, 257].includes((s.op as { nr?: number }).nr ?? -1)),
    'omit=files: no setsid, no open',
  );
});

t.test('task.json: every field checked', async (t) => {
  const good = { pgid: 5, sid: 5, files: [{ fd: 3, path: '/tmp/d.log', flags: O.WRONLY, pos: '42', kind: 'file' }], userfaultfds: [] };
  t.same(validateTask(good).files[0]!.pos, 42n);
  // 0: a leader outside the checkpoint's pid namespace (a process checkpointed in a container), as /proc shows it.
  t.same(validateTask({ ...good, pgid: 0, sid: 0 }).sid, 0);
  const rejects = (mutate: (j: any) => void, field: string): void => {
    const j = JSON.parse(JSON.stringify(good));
    mutate(j);
    try {
      validateTask(j);
      t.fail(`accepted a bad ${field}`);
    } catch (error) {
      t.ok(error instanceof ImageRejectedError && error.entry === 'task.json' && error.field === field, `${field}: ${(error as Error).message}`);
    }
  };
  rejects((j) => (j.pgid = -1), 'pgid');
  rejects((j) => (j.pgid = 4194305), 'pgid');
  rejects((j) => (j.sid = 'x'), 'sid');
  rejects((j) => (j.files[0].fd = 2), 'files[0].fd');
  rejects((j) => j.files.push({ ...j.files[0] }), 'files[1].fd');
  rejects((j) => (j.files[0].path = '/tmp/../etc/shadow'), 'files[0].path');
  rejects((j) => (j.files[0].path = 'relative'), 'files[0].path');
  rejects((j) => (j.files[0].flags = 0o40000000000), 'files[0].flags');
  rejects((j) => (j.files[0].pos = '-1'), 'files[0].pos');
  rejects((j) => (j.files[0].kind = 'device'), 'files[0].kind');
  rejects((j) => (j.files[0].path = 'pipe:[3]'), 'files[0].path');
  rejects((j) => (j.files = new Array(1025).fill(j.files[0])), 'files');
  rejects((j) => (j.files = null), 'files');
  rejects((j) => (j.userfaultfds = [{ fd: 3, flags: 0, features: 0 }]), 'userfaultfds[0].fd');
  t.equal(validateTask({ ...good, umask: 0o77 }).umask, 0o77, 'a umask is kept');
  t.equal(validateTask(good).umask, undefined, 'an image from before the umask was kept has none');
  rejects((j) => (j.umask = 0o1000), 'umask');
  rejects((j) => (j.umask = -1), 'umask');
  rejects((j) => (j.umask = '022'), 'umask');
});

t.test('umask: read from /proc/PID/status, given back by one umask(2) before the files', async (t) => {
  t.equal(parseUmask('Name:\tx\nUmask:\t0077\nState:\tt\n'), 0o77);
  t.equal(parseUmask('Name:\tx\nState:\tt\n'), undefined, 'a kernel without the line (before 4.7)');
  t.same(umaskSteps(7, { pgid: 7, sid: 7, files: [] }), [], 'no mask in the image: no step');
  const [step] = umaskSteps(7, { pgid: 7, sid: 7, files: [], umask: 0o27 });
  t.same(step?.op, { op: 'INJECT_SYSCALL', pid: 7, nr: 95, args: [0o27n] });
});
