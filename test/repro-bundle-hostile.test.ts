// expect: `crh repro --bundle` treats a bundle as data: every hostile bundle (compiler wrapper flags, a file outside the bundle, `..` and absolute names, artifacts/kernel/modules paths, absurd timeouts, link/device/oversized entries, missing or garbled verdict.json, an old command-line rerun) is refused with a BundleRejectedError (exit 2) naming the field, while a canary file outside stays unread, no compiler is spawned, no wrapper payload runs, and nothing is written; an honest bundle under the same probes does spawn the compiler (the probes can fail), and what will run is printed with control characters escaped.
import t from 'tap';
import { execa } from 'execa';
import { chmod, mkdir, mkdtemp, readdir, readFile, stat, utimes, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tar from 'tar-stream';
import { reproCommand } from '../harness/repro/command.ts';
import { compileReproducer } from '../harness/repro/compile.ts';
import { describeRerun, requestFromRecord } from '../harness/repro/bundle-rerun.ts';
import { parseReproArgs } from '../harness/repro/options.ts';
import { BUNDLE_LIMITS } from '../harness/repro/bundle.ts';
import { BundleRejectedError, UsageError } from '../harness/repro/usage-error.ts';
import { parseRerunRecord, rerunRecord, RERUN_LIMITS, type RerunRecord } from '../harness/repro/rerun-record.ts';
import { VERDICT_FORMAT, VERDICT_VERSION } from '../harness/repro/verdict.ts';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';

interface TarEntry {
  name: string;
  data?: string | Buffer;
  type?: 'file' | 'symlink' | 'link' | 'character-device' | 'directory';
  linkname?: string;
}

/** The tar bytes of `entries`, as tar-stream packs them. */
async function tarOf(entries: readonly TarEntry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => void chunks.push(c as Buffer));
  const ended = new Promise<void>((resolve) => pack.on('end', () => resolve()));
  for (const e of entries) {
    await new Promise<void>((resolve, reject) => {
      const header = {
        name: e.name,
        type: e.type ?? 'file',
        mode: 0o644,
        ...(e.linkname ? { linkname: e.linkname } : {}),
        ...(e.type === 'character-device' ? { devmajor: 1, devminor: 5 } : {}),
      };
      if (e.type && e.type !== 'file') pack.entry(header, (error) => (error ? reject(error) : resolve()));
      else pack.entry(header, e.data ?? '', (error) => (error ? reject(error) : resolve()));
    });
  }
  pack.finalize();
  await ended;
  return Buffer.concat(chunks);
}

/** A tar whose one entry claims `size` bytes: the header and a first block are enough for a reader to refuse it. */
async function oversizedTar(name: string, size: number): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => void chunks.push(c as Buffer));
  const sink = pack.entry({ name, size, mode: 0o644 });
  sink.write(Buffer.alloc(512));
  await new Promise((resolve) => setTimeout(resolve, 50));
  return Buffer.concat(chunks);
}

const honestRecord = (): Record<string, unknown> => ({
  version: 1,
  command: 'repro',
  source: 'source/prog.c',
  files: [],
  checkpoint: { kind: 'symbol', symbol: 'checkpoint_here', hit: 1 },
  policy: { rf: 'keep-and-preserve', regs: 'full', restorer: 'ptrace', rseqFixup: 'on', syscallRestart: 'on', omit: [] },
  timeoutMs: 60_000,
  args: [],
});
const verdictJson = (rerun: unknown, over: Record<string, unknown> = {}): string =>
  JSON.stringify({ format: VERDICT_FORMAT, version: VERDICT_VERSION, pass: true, summary: 'the restored run matches', mismatches: [], rerun, ...over });
const PROGRAM = '__attribute__((noipa)) void checkpoint_here(void) {}\nint main(void) { checkpoint_here(); return 0; }\n';

t.test('hostile bundles are refused naming the field; nothing outside is read, written or run', async (t) => {
  const base = await mkdtemp(path.join(tmpdir(), 'crh-hostile-'));
  await chmod(base, 0o755);
  // Probes. The compiler runs as nobody: the fake gcc's directory and the markers' must be open to it.
  const fakebin = path.join(base, 'fakebin');
  const markers = path.join(base, 'markers');
  await mkdir(fakebin, { mode: 0o755 });
  await mkdir(markers);
  await chmod(markers, 0o777);
  const gccRan = path.join(markers, 'gcc-ran');
  const wrapperRan = path.join(markers, 'wrapper-ran');
  await writeFile(path.join(fakebin, 'gcc'), `#!/bin/sh\necho "$@" >> ${gccRan}\nexit 1\n`, { mode: 0o755 });
  const canary = path.join(base, 'canary.txt');
  const canaryText = 'canary: must not be read\n';
  await writeFile(canary, canaryText);
  const old = new Date(Math.floor(Date.now() / 1000 - 3 * 24 * 3600) * 1000);
  const resetCanary = async (): Promise<void> => utimes(canary, old, old);
  await resetCanary();
  const canaryAtime = async (): Promise<number> => (await stat(canary)).atimeMs;
  // Every temporary directory crh makes (extraction, compile sandbox) lands here, so "nothing written" is checkable.
  const privateTmp = path.join(base, 'tmp');
  await mkdir(privateTmp, { mode: 0o755 });
  const out = path.join(base, 'out', 'rerun.tar');
  const artifacts = path.join(base, 'artifacts');

  const savedPath = process.env.PATH;
  const savedTmp = process.env.TMPDIR;
  process.env.PATH = `${fakebin}:${savedPath ?? ''}`;
  process.env.TMPDIR = privateTmp;
  t.teardown(() => {
    process.env.PATH = savedPath;
    if (savedTmp === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = savedTmp;
  });

  await t.test('control: the probes see what they probe', async (t) => {
    await readFile(canary);
    t.not(await canaryAtime(), old.getTime(), 'reading the canary moves its atime (relatime: it was older than its mtime allows)');
    await resetCanary();
    t.equal(await canaryAtime(), old.getTime());
    // The wrapper payload, given to a real compiler by the person's own --cflags, runs: it is what a bundle must never reach.
    const src = path.join(base, 'w.c');
    await writeFile(src, PROGRAM);
    process.env.PATH = savedPath;
    await compileReproducer(src, path.join(base, 'w-build'), ['-wrapper', `/bin/sh,-c,touch ${wrapperRan}`]).catch(() => {});
    process.env.PATH = `${fakebin}:${savedPath ?? ''}`;
    t.ok(existsSync(wrapperRan), 'gcc -wrapper /bin/sh,-c,... runs the payload');
    await import('node:fs/promises').then((fs) => fs.rm(wrapperRan));
    await import('node:fs/promises').then((fs) => fs.rm(path.join(base, 'w-build'), { recursive: true, force: true }));
    t.same(await readdir(privateTmp), [], 'the compile sandbox cleans up after itself');
  });

  const hostile: Array<[string, TarEntry[] | (() => Promise<Buffer>), RegExp]> = [
    [
      'compiler wrapper flags',
      [
        { name: 'verdict.json', data: verdictJson({ ...honestRecord(), cflags: ['-wrapper', `/bin/sh,-c,touch ${wrapperRan}`] }) },
        { name: 'source/prog.c', data: PROGRAM },
      ],
      /verdict\.json rerun\.cflags: compiler flags are never taken from a bundle/,
    ],
    [
      'a file outside the bundle (--file /etc/shadow)',
      [
        { name: 'verdict.json', data: verdictJson({ ...honestRecord(), command: 'cr', source: undefined, binary: 'binary/prog', files: [canary] }) },
        { name: 'binary/prog', data: 'x' },
      ],
      /verdict\.json rerun\.files\[0\]: ".*canary\.txt" is not a bundle entry files\/NAME/,
    ],
    [
      'a ../ file name',
      [
        {
          name: 'verdict.json',
          data: verdictJson({ ...honestRecord(), command: 'cr', source: undefined, binary: 'binary/prog', files: ['files/../../canary.txt'] }),
        },
        { name: 'binary/prog', data: 'x' },
      ],
      /verdict\.json rerun\.files\[0\]: "files\/\.\.\/\.\.\/canary\.txt" is not a bundle entry/,
    ],
    [
      'a ../ source name',
      [
        { name: 'verdict.json', data: verdictJson({ ...honestRecord(), source: '../source/prog.c' }) },
        { name: 'source/prog.c', data: PROGRAM },
      ],
      /verdict\.json rerun\.source: "\.\.\/source\/prog\.c" is not a bundle entry/,
    ],
    [
      'an absolute source path',
      [
        { name: 'verdict.json', data: verdictJson({ ...honestRecord(), source: path.join(base, 'w.c') }) },
        { name: 'source/prog.c', data: PROGRAM },
      ],
      /verdict\.json rerun\.source: ".*w\.c" is not a bundle entry source\/NAME/,
    ],
    [
      'artifacts elsewhere',
      [
        { name: 'verdict.json', data: verdictJson({ ...honestRecord(), artifacts: path.join(base, 'elsewhere') }) },
        { name: 'source/prog.c', data: PROGRAM },
      ],
      /verdict\.json rerun\.artifacts: where crh writes is never taken from a bundle/,
    ],
    [
      'an output path',
      [
        { name: 'verdict.json', data: verdictJson({ ...honestRecord(), out: canary }) },
        { name: 'source/prog.c', data: PROGRAM },
      ],
      /verdict\.json rerun\.out: where crh writes/,
    ],
    [
      'a kernel path',
      [
        { name: 'verdict.json', data: verdictJson({ ...honestRecord(), kernel: canary }) },
        { name: 'source/prog.c', data: PROGRAM },
      ],
      /verdict\.json rerun\.kernel: kernel and module paths are never taken from a bundle/,
    ],
    [
      'a modules path',
      [
        { name: 'verdict.json', data: verdictJson({ ...honestRecord(), modules: base }) },
        { name: 'source/prog.c', data: PROGRAM },
      ],
      /verdict\.json rerun\.modules: kernel and module paths/,
    ],
    [
      'an absurd timeout',
      [
        { name: 'verdict.json', data: verdictJson({ ...honestRecord(), timeoutMs: 1e12 }) },
        { name: 'source/prog.c', data: PROGRAM },
      ],
      new RegExp(`verdict\\.json rerun\\.timeoutMs: 1000000000000 is not a whole number from 1 to ${RERUN_LIMITS.timeoutMs}`),
    ],
    [
      'a negative timeout',
      [
        { name: 'verdict.json', data: verdictJson({ ...honestRecord(), timeoutMs: -5 }) },
        { name: 'source/prog.c', data: PROGRAM },
      ],
      /verdict\.json rerun\.timeoutMs: -5 is not a whole number/,
    ],
    [
      'an absurd hit count',
      [
        { name: 'verdict.json', data: verdictJson({ ...honestRecord(), checkpoint: { kind: 'symbol', symbol: 'f', hit: 1e9 } }) },
        { name: 'source/prog.c', data: PROGRAM },
      ],
      /verdict\.json rerun\.checkpoint\.hit: 1000000000 is not a whole number/,
    ],
    [
      'a symlink entry',
      [
        { name: 'verdict.json', data: verdictJson(honestRecord()) },
        { name: 'source/prog.c', type: 'symlink', linkname: canary },
      ],
      /entry "source\/prog\.c": type symlink \(a bundle holds regular files only\)/,
    ],
    [
      'a hardlink entry',
      [
        { name: 'verdict.json', data: verdictJson(honestRecord()) },
        { name: 'source/prog.c', type: 'link', linkname: canary },
      ],
      /entry "source\/prog\.c": type link/,
    ],
    [
      'a device entry',
      [
        { name: 'verdict.json', data: verdictJson(honestRecord()) },
        { name: 'source/prog.c', type: 'character-device' },
      ],
      /entry "source\/prog\.c": type character-device/,
    ],
    [
      'an absolute entry name',
      [
        { name: canary, data: 'overwritten' },
        { name: 'verdict.json', data: verdictJson(honestRecord()) },
      ],
      /entry ".*canary\.txt": not a plain relative name/,
    ],
    [
      'an oversized entry',
      () => oversizedTar('checkpoint.tar', BUNDLE_LIMITS.entryBytes + 1),
      new RegExp(`entry "checkpoint\\.tar": too large: ${BUNDLE_LIMITS.entryBytes + 1} bytes`),
    ],
    ['no verdict.json', [{ name: 'source/prog.c', data: PROGRAM }], /: verdict\.json: missing \(is it a crh bundle\?\)/],
    [
      'a garbled verdict.json',
      [
        { name: 'verdict.json', data: '{"format": "cr-harness-repro-verdict", "version": 2, "pass": tr' },
        { name: 'source/prog.c', data: PROGRAM },
      ],
      /: verdict\.json: invalid JSON/,
    ],
    [
      'a verdict.json that is not an object',
      [
        { name: 'verdict.json', data: '["repro"]' },
        { name: 'source/prog.c', data: PROGRAM },
      ],
      /: verdict\.json: is not a JSON object/,
    ],
    [
      'an old bundle whose rerun is a command line',
      [
        {
          name: 'verdict.json',
          data: verdictJson(['repro', '{bundle}/source/prog.c', '--when-ready', `--cflags=-wrapper /bin/sh,-c,touch ${wrapperRan}`, '--file', canary], {
            version: 1,
          }),
        },
        { name: 'source/prog.c', data: PROGRAM },
      ],
      /verdict\.json version: version 1 records its rerun as a crh command line, which crh no longer takes from a bundle/,
    ],
    [
      'a command line in a current verdict',
      [
        { name: 'verdict.json', data: verdictJson(['repro', '{bundle}/source/prog.c', '--when-ready']) },
        { name: 'source/prog.c', data: PROGRAM },
      ],
      /verdict\.json rerun: must be an object/,
    ],
    [
      'a record naming an entry the bundle lacks',
      [
        {
          name: 'verdict.json',
          data: verdictJson({ ...honestRecord(), command: 'cr', source: undefined, binary: 'binary/prog', files: ['files/absent.txt'] }),
        },
        { name: 'binary/prog', data: 'x' },
      ],
      /verdict\.json rerun\.files\[0\]: "files\/absent\.txt" is no entry of the bundle/,
    ],
    [
      'an unknown field',
      [
        { name: 'verdict.json', data: verdictJson({ ...honestRecord(), env: { LD_PRELOAD: canary } }) },
        { name: 'source/prog.c', data: PROGRAM },
      ],
      /verdict\.json rerun\.env: unknown field/,
    ],
  ];

  for (const [why, contents, field] of hostile) {
    await t.test(why, async (t) => {
      const bundle = path.join(base, `${why.replace(/\W+/g, '-')}.tar`);
      await writeFile(bundle, typeof contents === 'function' ? await contents() : await tarOf(contents));
      const before = await canaryAtime();
      const error = await reproCommand('repro', ['--bundle', bundle, '--out', out, '--artifacts', artifacts]).then(
        () => undefined,
        (e: unknown) => e as Error,
      );
      t.ok(error instanceof BundleRejectedError, `refused with a BundleRejectedError (a UsageError: exit 2): ${error?.message}`);
      t.ok(error instanceof UsageError);
      t.match(error?.message, field, 'the message names the field');
      t.equal(await canaryAtime(), before, 'the canary outside the bundle was not read');
      t.equal(await readFile(canary, 'utf8'), canaryText, 'nor written');
      t.notOk(existsSync(gccRan), 'no compiler was spawned');
      t.notOk(existsSync(wrapperRan), 'no wrapper payload ran');
      t.notOk(existsSync(out) || existsSync(path.dirname(out)), 'no bundle written');
      t.notOk(existsSync(artifacts), 'no artifacts written');
      t.same(await readdir(privateTmp), [], 'nothing extracted');
    });
  }

  await t.test('control: an honest bundle under the same probes is printed, extracted and compiled (exit 2 from the fake gcc)', async (t) => {
    const bundle = path.join(base, 'honest.tar');
    const record = { ...honestRecord(), args: ['two words', 'bell\x07'] };
    await writeFile(
      bundle,
      await tarOf([
        { name: 'verdict.json', data: verdictJson(record) },
        { name: 'source/prog.c', data: PROGRAM },
      ]),
    );
    const r = await execa(process.execPath, [path.join(REPO_ROOT, 'bin', 'crh.js'), 'repro', '--bundle', bundle, '--out', out, '--artifacts', artifacts], {
      reject: false,
      cwd: REPO_ROOT,
      env: { PATH: process.env.PATH, TMPDIR: privateTmp },
      extendEnv: true,
    });
    t.equal(r.exitCode, 2, 'exit 2: the fake gcc fails');
    t.match(r.stdout, /^ {2}program: {4}source\/prog\.c \(the bundle's C source, compiled again without compiler flags\)$/m, 'what will run is printed first');
    t.match(r.stdout, /^ {2}arguments: {2}'two words' 'bell\\x07'$/m, 'arguments printed quoted, the control character escaped');
    t.match(r.stderr, /prog\.c does not compile/);
    t.ok(existsSync(gccRan), 'the compiler probe fired: it would have caught a spawn in the cases above');
    t.match(await readFile(gccRan, 'utf8'), /-o prog prog\.c$/m, "with the bundle's source, copied into the sandbox, and no flag from the bundle");
    t.same(
      (await readdir(privateTmp)).filter((n) => n.startsWith('crh-')),
      [],
      'the extraction and the sandbox are removed afterwards',
    );
  });

  await t.test('the CLI exits 2 for a refused bundle', async (t) => {
    const bundle = path.join(base, 'compiler-wrapper-flags.tar');
    const r = await execa(process.execPath, [path.join(REPO_ROOT, 'bin', 'crh.js'), 'repro', '--bundle', bundle], {
      reject: false,
      cwd: REPO_ROOT,
      env: { TMPDIR: privateTmp },
    });
    t.equal(r.exitCode, 2);
    t.match(r.stderr, /^BundleRejectedError: .*verdict\.json rerun\.cflags: /m);
  });
});

t.test('a rerun record round-trips, and every value out of bounds is refused by name', async (t) => {
  const record = honestRecord() as unknown as RerunRecord;
  t.same(parseRerunRecord(record, 'b.tar'), record);
  const bad: Array<[Record<string, unknown>, RegExp]> = [
    [{ command: 'sh' }, /rerun\.command: "sh"/],
    [{ binary: 'binary/x' }, /rerun\.binary: a repro record names its program by source only/],
    [{ source: 'source/prog' }, /rerun\.source: "source\/prog" is not a \.c file/],
    [{ checkpoint: { kind: 'after', ms: 1e10 } }, /rerun\.checkpoint\.ms: 10000000000 is not a whole number from 1 to 1800000/],
    [{ checkpoint: { kind: 'symbol', symbol: '$(reboot)', hit: 1 } }, /rerun\.checkpoint\.symbol: .* is neither a symbol name nor a 0x address/],
    [{ checkpoint: { kind: 'ready', extra: 1 } }, /rerun\.checkpoint\.extra: unknown field/],
    [{ finishSignal: 'USR1' }, /rerun\.finishSignal: goes with a "ready" checkpoint only/],
    [{ checkpoint: { kind: 'ready' }, finishSignal: 'SIGNOPE' }, /rerun\.finishSignal: .*unknown signal "SIGNOPE"/],
    [{ policy: { ...(honestRecord().policy as object), rf: 'sometimes' } }, /rerun\.policy: unknown rf policy "sometimes"/],
    [{ policy: { ...(honestRecord().policy as object), omit: ['signals,files'] } }, /rerun\.policy\.omit: must be a list of names/],
    [{ args: ['a\0b'] }, /rerun\.args\[0\]: must be a string .* without NUL/],
    [{ args: Array.from({ length: RERUN_LIMITS.args + 1 }, () => 'x') }, /rerun\.args: 257 arguments/],
    [{ command: 'cr', source: undefined, binary: 'binary/p', files: ['files/a', 'files/a'] }, /rerun\.files: "files\/a" is named twice/],
    [{ files: ['files/a'] }, /rerun\.files: a repro record takes no files/],
    [{ version: 2 }, /rerun\.version: 2; this crh reads rerun records of version 1/],
  ];
  for (const [over, message] of bad) {
    const error = (() => {
      try {
        parseRerunRecord({ ...honestRecord(), ...over }, 'b.tar');
      } catch (e) {
        return e as Error;
      }
      return undefined;
    })();
    t.ok(error instanceof BundleRejectedError, `${JSON.stringify(over).slice(0, 60)}: refused`);
    t.match(error?.message, message);
  }
  const plan = describeRerun('/x/b\x1b]0;pwned\x07.tar', { ...record, command: 'cr', source: undefined, binary: 'binary/p', args: ['\x1b[2J'] } as RerunRecord);
  t.equal(plan[0], 'rerun of b\\x1b]0;pwned\\x07.tar:', 'the bundle name, escaped');
  t.notMatch(plan.join('\n'), /[\x00-\x08\x0b-\x1f\x7f]/, 'no control character reaches the terminal');
});

t.test('a request becomes a record and back: the same request but for paths; --cflags reruns the binary the bundle carries', async (t) => {
  const parsed = parseReproArgs('repro', [
    '/src/x.c',
    '--checkpoint-at',
    'here',
    '--hit',
    '2',
    '--rf',
    'clear',
    '--omit',
    'xstate,tls',
    '--timeout',
    '5000',
    '--',
    'one',
    'two words',
  ]);
  if ('bundle' in parsed) throw new Error('expected a request');
  const record = rerunRecord(parsed, { source: 'source/x.c', binary: 'binary/x', files: [] });
  t.equal(record.command, 'repro');
  const back = parseRerunRecord(JSON.parse(JSON.stringify(record)), 'b.tar');
  t.same(back, record, 'through JSON and the checks unchanged');
  const again = requestFromRecord(back, new Map([['source/x.c', '/private/source/x.c']]), { out: '/o.tar' });
  t.same(
    { ...again, source: undefined, out: undefined },
    { ...parsed, source: undefined, out: undefined },
    'checkpoint, policy, timeout and arguments survive',
  );
  t.equal(again.source, '/private/source/x.c');

  const flagged = parseReproArgs('repro', ['/src/m.c', '--when-ready', '--cflags', '-lm -wrapper /bin/sh,-c,id']);
  if ('bundle' in flagged) throw new Error('expected a request');
  const binaryRecord = rerunRecord(flagged, { source: 'source/m.c', binary: 'binary/m', files: [] });
  t.equal(binaryRecord.command, 'cr', 'built with --cflags: rerun as cr');
  t.equal(binaryRecord.binary, 'binary/m');
  t.equal(binaryRecord.source, undefined);
  t.notMatch(JSON.stringify(binaryRecord), /lm|wrapper/, 'no compiler flag in the record');
  t.same(requestFromRecord(binaryRecord, new Map([['binary/m', '/p/binary/m']]), { out: '/o.tar' }).cflags, []);
});
