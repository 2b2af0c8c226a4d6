// expect: every infrastructure fault in the middle of a crh repro — QEMU SIGKILLed during a checkpoint and during a restore, the agent killed, the SSH connection dropped, the agent port's connection dropped, a guest panic in the middle of a restore (--inject-fault PHASE:KIND), the artifacts disk full — ends in exit 69 within 30 s of the fault with an error naming the phase and the cause, the run's artifacts kept, and no QEMU process, temp directory or reaper record of the run left behind; a full disk is not a FAIL and leaves no partial image.
import t, { type Test } from 'tap';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { recordsDir } from '../harness/machine/reaper.ts';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';

const crh = path.join(REPO_ROOT, 'bin', 'crh.js');
const FAULT_TO_EXIT_MS = 30_000;

interface Faulted {
  exitCode: number | undefined;
  stdout: string;
  stderr: string;
  /** from the fault (the progress line that announces it) to crh's exit */
  faultToExitMs: number;
  machine: string;
  runDir: string;
}

/** Runs crh repro with its own TMPDIR, so that what it leaves there is its own and nobody else's. */
async function runFaulted(t: Test, args: string[], artifacts: string, runName: string, faultLine: RegExp): Promise<Faulted> {
  const privateTmp = await mkdtemp(path.join(tmpdir(), 'crh-fault-test-tmp-'));
  t.teardown(() => rm(privateTmp, { recursive: true, force: true }));
  const child = execa(process.execPath, [crh, 'repro', ...args, '--artifacts', artifacts, '--out', path.join(artifacts, `${runName}.tar`)], {
    reject: false,
    cwd: REPO_ROOT,
    env: { TMPDIR: privateTmp },
  });
  // The fault's moment: when the progress line that announces it reaches us, as it is written.
  let seen = '';
  let faultAt: number | undefined;
  child.stderr?.on('data', (chunk: Buffer) => {
    seen += chunk.toString('utf8');
    if (faultAt === undefined && faultLine.test(seen)) faultAt = Date.now();
  });
  const r = await child;
  const exitedAt = Date.now();
  const stderr = r.stderr;
  t.ok(faultAt !== undefined, `the fault's moment was seen (${faultLine.source})`);
  const machine = /launch (crh-\d+-\d+)/.exec(stderr)?.[1] ?? '';
  t.ok(machine, `the machine's name is in the progress output (${machine})`);
  t.same(
    (await readdir(privateTmp)).filter((f) => f.startsWith('crh-')),
    [],
    'no crh-… temp directory or file of the run is left in its TMPDIR',
  );
  return { exitCode: r.exitCode, stdout: r.stdout, stderr, faultToExitMs: exitedAt - (faultAt ?? 0), machine, runDir: path.join(artifacts, 'repro', runName) };
}

/** No process whose command line names the machine; no reaper record of the crh process that ran it. */
async function nothingLeft(t: Test, machine: string): Promise<void> {
  const qemus = readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .filter((p) => {
      try {
        return readFileSync(`/proc/${p}/cmdline`, 'utf8')
          .split('\0')
          .some((arg) => arg.includes(machine));
      } catch {
        return false;
      }
    });
  t.same(qemus, [], `no process runs ${machine}`);
  const owner = /^crh-(\d+)-/.exec(machine)?.[1];
  const records = (await readdir(await recordsDir())).filter((f) => f.startsWith(`${owner}-`));
  t.same(records, [], 'no reaper record of the run is left');
}

const FAULTS: Array<{ phase: string; kind: string; cause: RegExp }> = [
  { phase: 'checkpoint', kind: 'kill-qemu', cause: /guest lost: QEMU killed by SIGKILL/ },
  { phase: 'restore', kind: 'kill-qemu', cause: /guest lost: QEMU killed by SIGKILL/ },
  { phase: 'checkpoint', kind: 'kill-agent', cause: /the agent was killed by SIGKILL/ },
  { phase: 'restore', kind: 'drop-ssh', cause: /SSH connection to the guest lost/ },
  { phase: 'restore', kind: 'drop-agent', cause: /the agent port connection to the guest was lost/ },
  { phase: 'restore', kind: 'guest-panic', cause: /guest lost: (kernel died: .*(sysrq|Kernel panic)|GUEST_PANICKED)/ },
];

t.test('faults injected in a phase: exit 69 naming the phase and the cause, nothing left behind', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-fault-test-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const artifacts = path.join(dir, 'artifacts');
  const timings: string[] = [];
  for (const fault of FAULTS) {
    await t.test(`${fault.phase}:${fault.kind}`, async (t) => {
      const runName = `${fault.phase}-${fault.kind}`;
      const r = await runFaulted(
        t,
        [path.join(REPO_ROOT, 'examples', 'repro', 'checksum.c'), '--checkpoint-at', 'checkpoint_here', '--inject-fault', `${fault.phase}:${fault.kind}`],
        artifacts,
        runName,
        /injecting fault/,
      );
      if (!t.equal(r.exitCode, 69, 'exit 69 (infrastructure)')) t.comment(r.stderr.slice(-3000));
      t.match(r.stderr, /injecting fault/, 'the fault was injected');
      t.match(r.stderr, new RegExp(`^InfraError: during ${fault.phase}: ${fault.cause.source}`, 'm'), 'the error names the phase, then the cause');
      t.ok(r.faultToExitMs < FAULT_TO_EXIT_MS, `exit ${r.faultToExitMs} ms after the fault (< ${FAULT_TO_EXIT_MS} ms)`);
      t.match(r.stderr, new RegExp(`--- artifacts ---\\n${r.runDir}`), 'the error names the run directory');
      t.ok(existsSync(path.join(r.runDir, 'console.log')), 'the console log is kept');
      t.match(readFileSync(path.join(r.runDir, 'console.log'), 'utf8'), new RegExp(`crh repro: ${fault.phase}`), 'and shows the phase the fault struck');
      await nothingLeft(t, r.machine);
      timings.push(`${fault.phase}:${fault.kind} ${r.faultToExitMs} ms`);
    });
  }
  t.comment(`fault to exit: ${timings.join('; ')}`);
});

const notRoot = process.getuid?.() !== 0 ? 'mounting a small tmpfs needs root' : false;
t.test('the artifacts disk full while the image is written: exit 69 naming the file, no partial image', { skip: notRoot }, async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-fault-test-disk-'));
  const artifacts = path.join(dir, 'small');
  await mkdir(artifacts);
  // 3 MiB: the program, its build and the logs fit; an image of its 8 MiB heap does not.
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=3m,mode=0755', 'crh-fault-test', artifacts]);
  t.teardown(async () => {
    execFileSync('umount', [artifacts]);
    await rm(dir, { recursive: true, force: true });
  });
  const r = await runFaulted(
    t,
    [path.join(REPO_ROOT, 'test', 'fixtures', 'repro', 'bigheap.c'), '--checkpoint-at', 'checkpoint_here'],
    artifacts,
    'bigheap',
    /\] checkpoint:/,
  );
  if (!t.equal(r.exitCode, 69, 'exit 69, not a FAIL')) t.comment(r.stderr.slice(-3000));
  t.match(
    r.stderr,
    new RegExp(`^InfraError: during checkpoint: cannot write the checkpoint image ${r.runDir}/checkpoint\\.tar: ENOSPC`, 'm'),
    'the phase, the file and ENOSPC named',
  );
  t.notMatch(r.stdout, /verdict:/, 'no verdict');
  t.ok(r.faultToExitMs < FAULT_TO_EXIT_MS, `exit ${r.faultToExitMs} ms after the checkpoint began`);
  t.same(
    readdirSync(r.runDir).filter((f) => f.includes('checkpoint')),
    [],
    'no image and no partial image in the run directory',
  );
  t.ok(existsSync(path.join(r.runDir, 'console.log')), 'the console log is kept');
  await nothingLeft(t, r.machine);
});
