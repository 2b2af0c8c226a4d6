// expect: a reproducer's C is compiled unprivileged (nobody when crh is root) under CPU, address-space and file-size limits in a fresh directory: `#include "/dev/zero"` stops at the address-space limit, `.incbin "/etc/shadow"` and `#include` of an unreadable file fail as permission denied — each a UsageError naming the cause — while an honest reproducer still compiles, and a wall-clock, CPU or file-size stop is named as such.
import t from 'tap';
import { mkdtemp, readdir, readFile, stat, writeFile, chmod } from 'node:fs/promises';
import { execa } from 'execa';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { compileReproducer, COMPILE_LIMITS, COMPILE_UID, failureCause } from '../harness/repro/compile.ts';
import { UsageError } from '../harness/repro/usage-error.ts';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';

const asRoot = process.getuid?.() === 0;

async function compileError(dir: string, name: string, source: string): Promise<UsageError | undefined> {
  const file = path.join(dir, name);
  await writeFile(file, source);
  return compileReproducer(file, path.join(dir, 'build')).then(
    () => undefined,
    (error: unknown) => error as UsageError,
  );
}

t.test('hostile C is stopped by the sandbox, each with its cause named', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-sandbox-test-'));
  const before = (await readdir(tmpdir())).filter((n) => n.startsWith('crh-compile-')).length;

  const started = Date.now();
  const zero = await compileError(dir, 'zero.c', '#include "/dev/zero"\nint main(void) { return 0; }\n');
  t.ok(zero instanceof UsageError, 'include /dev/zero: a UsageError');
  t.match(zero?.message, /zero\.c was not compiled: the compiler needed more than 2048 MiB of memory \(address-space limit hit/, String(zero?.message));
  t.match(zero?.details['gcc output'], /out of memory/);
  t.comment(`include /dev/zero stopped after ${Date.now() - started} ms`);

  const shadow = await compileError(dir, 'shadow.c', 'asm(".section .rodata\\n.incbin \\"/etc/shadow\\"\\n.text");\nint main(void) { return 0; }\n');
  t.ok(shadow instanceof UsageError, '.incbin /etc/shadow: a UsageError');
  if (asRoot)
    t.match(
      shadow?.message,
      /shadow\.c was not compiled: the assembler could not open \/etc\/shadow \(permission denied or absent\): the compiler runs as nobody \(uid 65534/,
      String(shadow?.message),
    );
  else t.match(shadow?.message, /shadow\.c was not compiled: the assembler could not open \/etc\/shadow/);
  t.notMatch(shadow?.details['gcc output'] ?? '', /root:/, 'no line of the file reached the diagnostics');

  // A file only root may read: as root crh could read it, the sandboxed compiler may not.
  const secret = path.join(dir, 'secret.h');
  await writeFile(secret, 'int leaked = 1;\n', { mode: 0o600 });
  await chmod(dir, 0o755);
  const include = await compileError(dir, 'include.c', `#include "${secret}"\nint main(void) { return leaked; }\n`);
  if (asRoot) {
    t.ok(include instanceof UsageError, '#include of a root-only file: a UsageError');
    t.match(
      include?.message,
      new RegExp(`include\\.c was not compiled: permission denied reading ${secret.replace(/[.]/g, '\\.')}: the compiler runs as nobody \\(uid ${COMPILE_UID}`),
      String(include?.message),
    );
  } else {
    t.comment('not root: the compiler runs as this user, who may read the file');
  }

  const after = (await readdir(tmpdir())).filter((n) => n.startsWith('crh-compile-')).length;
  t.ok(after <= before, 'every sandbox directory is removed');
});

t.test('an honest reproducer compiles in the sandbox and is read back', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-sandbox-test-'));
  const source = path.join(REPO_ROOT, 'examples', 'repro', 'checksum.c');
  const compiled = await compileReproducer(source, path.join(dir, 'build'));
  t.equal(compiled.binary, path.join(dir, 'build', 'checksum'));
  const info = await stat(compiled.binary);
  t.ok(info.isFile() && info.size > 100_000, `a static binary, ${info.size} bytes`);
  t.equal(info.uid, process.getuid?.(), "owned by crh's user, not the sandbox's (it was read back and written anew)");
  t.same(compiled.command.slice(-3), ['-o', compiled.binary, source], "the command line names the caller's paths");
});

t.test('an absent source is a UsageError naming it', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-sandbox-test-'));
  await t.rejects(compileReproducer(path.join(dir, 'absent.c'), dir), /absent\.c: no such file/);
});

t.test('the wall clock kills the whole compiler process group: an include of a FIFO nobody writes', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-sandbox-test-'));
  await chmod(dir, 0o755);
  const fifo = path.join(dir, 'never-written');
  await execa('mkfifo', ['-m', '0666', fifo]);
  // A name of its own, to find any compiler process left behind by its command line.
  const name = `fifo-${process.pid}-${Date.now()}.c`;
  const file = path.join(dir, name);
  await writeFile(file, `#include "${fifo}"\nint main(void) { return 0; }\n`);
  const started = Date.now();
  const error = await compileReproducer(file, path.join(dir, 'build'), [], { ...COMPILE_LIMITS, wallClockMs: 2000 }).then(
    () => undefined,
    (e: unknown) => e as Error,
  );
  const tookMs = Date.now() - started;
  t.ok(error instanceof UsageError);
  t.match(error?.message, /was not compiled: the compiler ran longer than 2 s \(wall-clock limit hit; it was killed\)/);
  t.ok(tookMs >= 2000 && tookMs < 20_000, `stopped at the wall clock (${tookMs} ms)`);
  const left: string[] = [];
  for (const pid of await readdir('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes(name)) left.push(`${pid}: ${cmdline.replaceAll('\0', ' ')}`);
  }
  t.same(left, [], 'no gcc or cc1 of it is left running');
});

t.test('causes: wall clock, CPU time, file size, output, permission, plain error', async (t) => {
  const run = (over: Partial<Parameters<typeof failureCause>[0]>): string | undefined =>
    failureCause({ wallClockHit: false, outputTooLong: false, signal: undefined, stderr: '', ...over });
  t.match(run({ wallClockHit: true }), /wall-clock limit hit/);
  t.match(run({ stderr: 'gcc: fatal error: CPU time limit exceeded signal terminated program cc1' }), /CPU-time limit hit/);
  t.match(run({ signal: 'SIGXFSZ' }), /file-size limit hit/);
  t.match(run({ stderr: 'gcc: fatal error: File size limit exceeded signal terminated program as' }), /file-size limit hit/);
  t.match(run({ outputTooLong: true }), /output limit hit/);
  t.match(run({ stderr: 'x.c:1:10: fatal error: /root/secret.h: Permission denied\ncompilation terminated.' }), /permission denied reading \/root\/secret\.h/);
  t.equal(run({ stderr: "x.c:1:25: error: 'y' undeclared" }), undefined, 'a compile error is not a limit');
});
