// expect: `crh repro --engine criu` hands the example stopped at its breakpoint to CRIU 4.1.1 in the guest and passes
// (exit 0, pid kept, the address executed as often as uninterrupted, CRIU's logs in the bundle, no crh image, DR0/DR7
// after CRIU's restore recorded and a difference named a known engine gap); the negative control — a program holding
// an established loopback TCP connection, which CRIU refuses to dump without --tcp-established — FAILs (exit 1) with
// CRIU's refusal as the summary; policy switches with --engine criu are a usage error (exit 2) before any guest starts.
// --engine crh,criu: both on one program against one uninterrupted run, verdicts side by side and a bundle each; with
// the TCP program crh's refusal shows beside CRIU's FAIL and the exit is 1.
import t, { type Test } from 'tap';
import { existsSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { readBundle } from '../harness/repro/bundle.ts';
import { parseVerdict } from '../harness/repro/verdict.ts';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';

const crh = path.join(REPO_ROOT, 'bin', 'crh.js');

async function crhRun(args: string[]): Promise<{ exitCode: number | undefined; stdout: string; stderr: string }> {
  const r = await execa(process.execPath, [crh, ...args], { reject: false, cwd: REPO_ROOT });
  return { exitCode: r.exitCode, stdout: r.stdout, stderr: r.stderr };
}

type CrhRun = Awaited<ReturnType<typeof crhRun>>;

const CHECKSUM = path.join(REPO_ROOT, 'examples/repro/checksum.c');
const TCP_LOOPBACK = path.join(REPO_ROOT, 'test/fixtures/criu/tcp-loopback.c');

/** `crh repro PROGRAM --checkpoint-at checkpoint_here --engine ENGINE ...rest`: every run of this file. */
const repro = (program: string, engine: string, ...rest: string[]): Promise<CrhRun> =>
  crhRun(['repro', program, '--checkpoint-at', 'checkpoint_here', '--engine', engine, ...rest]);

/** One end-to-end run: the program under the engine(s), its exit code, and what its output and bundle(s) must show. */
interface EngineRun {
  title: string;
  program: string;
  engine: 'criu' | 'crh,criu';
  /** the bundle's file name in the test's directory (--out) */
  bundle: string;
  exitCode: 0 | 1;
  exitWhy: string;
  check(t: Test, r: CrhRun, bundle: string, dir: string): Promise<void>;
}

const runs: EngineRun[] = [
  {
    title: 'exit 0: CRIU dumps and restores the example, and the run matches',
    program: CHECKSUM,
    engine: 'criu',
    bundle: 'checksum-criu.tar',
    exitCode: 0,
    exitWhy: 'exit 0',
    async check(t, r, bundle) {
      t.match(r.stdout, /^verdict: PASS — the restored run matches the uninterrupted run/m);
      t.match(r.stderr, /criu dump: breakpoint hit 1 at checkpoint_here/);
      const entries = await readBundle(bundle);
      const verdict = parseVerdict(entries.get('verdict.json')!.data.toString('utf8'));
      t.equal(verdict.engine, 'criu');
      t.equal(verdict.criu?.version, '4.1.1-1', "Debian trixie's CRIU ran");
      t.ok(
        (verdict.criu?.dumpMs ?? 0) > 0 && (verdict.criu?.restoreMs ?? 0) > 0 && (verdict.criu?.imageBytes ?? 0) > 0,
        `timed: dump ${verdict.criu?.dumpMs} ms, restore ${verdict.criu?.restoreMs} ms, ${verdict.criu?.imageBytes} bytes`,
      );
      t.equal(verdict.checkpoint.restoredPid, verdict.checkpoint.pid, 'CRIU kept the pid');
      t.equal(verdict.restored?.hits, verdict.reference.hits, 'checkpoint_here ran as often as without the checkpoint');
      t.ok(entries.has('criu/dump.log') && entries.has('criu/restore.log') && !entries.has('checkpoint.tar'), "CRIU's logs, no crh image");
      t.match(entries.get('criu/restore.log')?.data.toString(), /Restore finished successfully/);
      const regs = verdict.criu?.debugRegisters;
      t.ok(regs, `debug registers after CRIU's restore: ${JSON.stringify(regs)}`);
      const gap = verdict.notes.find((n) => n.startsWith('known engine gap'));
      t.equal(
        Boolean(gap),
        regs?.dr7 !== '0x1' || regs?.dr0 !== verdict.checkpoint.address,
        `a debug-register difference is a note: ${gap ?? '(none: CRIU restored them)'}`,
      );
      t.equal(verdict.rerun.engine, 'criu', 'the rerun record keeps the engine');
    },
  },
  {
    title: 'negative control: an established TCP connection, which CRIU refuses, FAILs with its refusal',
    program: TCP_LOOPBACK,
    engine: 'criu',
    bundle: 'tcp-criu.tar',
    exitCode: 1,
    exitWhy: 'exit 1',
    async check(t, r, bundle) {
      t.match(r.stdout, /^verdict: FAIL — .*criu dump failed/m);
      const verdict = parseVerdict((await readBundle(bundle)).get('verdict.json')!.data.toString('utf8'));
      t.equal(verdict.pass, false);
      t.match(
        verdict.restoreError,
        /^criu dump failed \(exit 1\): Error \(criu\/sk-inet\.c:\d+\): inet: Connected TCP socket, consider using --tcp-established option\./,
        "CRIU's own reason",
      );
      t.equal(verdict.reference.output, 'connection kept\n', 'the uninterrupted run kept its connection');
    },
  },
  {
    title: '--engine crh,criu: both engines on one program in one guest, the verdicts side by side, a bundle each',
    program: CHECKSUM,
    engine: 'crh,criu',
    bundle: 'checksum-both.tar',
    exitCode: 0,
    exitWhy: 'exit 0: both passed',
    async check(t, r, bundle, dir) {
      t.match(
        r.stdout,
        /^verdict \[crh \]: PASS +— the restored run matches the uninterrupted run.*\nverdict \[criu\]: PASS +— the restored run matches/m,
        "crh's verdict, then CRIU's",
      );
      t.equal(r.stderr.match(/uninterrupted run$/gm)?.length, 1, 'one uninterrupted run for both');
      const crhBundle = await readBundle(bundle);
      const criuBundle = await readBundle(path.join(dir, 'checksum-both-criu.tar'));
      const crhVerdict = parseVerdict(crhBundle.get('verdict.json')!.data.toString('utf8'));
      const criuVerdict = parseVerdict(criuBundle.get('verdict.json')!.data.toString('utf8'));
      t.same([crhVerdict.engine, criuVerdict.engine], ['crh', 'criu']);
      t.equal(criuVerdict.reference.output, crhVerdict.reference.output, 'judged against the same uninterrupted run');
      t.ok(
        crhBundle.has('checkpoint.tar') && !criuBundle.has('checkpoint.tar') && criuBundle.has('criu/dump.log'),
        "crh's image in its bundle, CRIU's logs in CRIU's",
      );
      t.same([crhVerdict.rerun.engine, criuVerdict.rerun.engine], [undefined, 'criu'], 'each bundle reruns its own engine alone');
    },
  },
  {
    title: 'negative control, side by side: an established TCP connection, refused by both engines (each its own reason), exit 1',
    program: TCP_LOOPBACK,
    engine: 'crh,criu',
    bundle: 'tcp-both.tar',
    exitCode: 1,
    exitWhy: 'exit 1: CRIU failed',
    async check(t, r, bundle, dir) {
      t.notOk(existsSync(bundle), 'no crh bundle: crh took no checkpoint');
      t.ok(existsSync(path.join(dir, 'tcp-both-criu.tar')), "CRIU's bundle, with its refusal");
      t.match(
        r.stdout,
        /^verdict \[crh \]: REFUSED +— CheckpointError: .*socket.*\nverdict \[criu\]: FAIL +— .*criu dump failed.*--tcp-established/m,
        "crh's refusal beside CRIU's",
      );
    },
  },
];

t.test('crh repro --engine criu, end to end', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-repro-criu-'));
  const artifacts = path.join(dir, 'artifacts');

  await t.test('usage: a policy switch with --engine criu is refused by name', async (t) => {
    const r = await repro(CHECKSUM, 'criu', '--rf', 'clear');
    t.equal(r.exitCode, 2);
    t.match(r.stderr, /--rf is a policy of crh's restore core and cannot apply to --engine criu/);
  });

  for (const run of runs) {
    await t.test(run.title, async (t) => {
      const bundle = path.join(dir, run.bundle);
      const r = await repro(run.program, run.engine, '--out', bundle, '--artifacts', artifacts);
      if (!t.equal(r.exitCode, run.exitCode, run.exitWhy)) t.comment(`${r.stdout}\n${r.stderr.slice(-3000)}`);
      await run.check(t, r, bundle, dir);
    });
  }
});
