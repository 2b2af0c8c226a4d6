// expect: crh restore --dry-run validates an image and prints its plan without a guest; a policy that refuses the image fails before any plan.
import t from 'tap';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { writeCheckpointImage } from '../harness/restore/checkpoint-image.ts';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';
import { syntheticImage } from './support/synthetic-image.ts';

const crh = path.join(REPO_ROOT, 'bin', 'crh.js');

t.test('the plan of a valid image, per restorer', async (t) => {
  const file = path.join(await mkdtemp(path.join(tmpdir(), 'crh-dry-')), 'image.tar');
  await writeCheckpointImage(syntheticImage(), file);
  for (const restorer of ['ptrace', 'sigreturn', 'popf']) {
    const r = await execa(process.execPath, [crh, 'restore', '--dry-run', file, '--restorer', restorer], { reject: false });
    t.equal(r.exitCode, 0, `${restorer}: exit 0`);
    t.match(r.stdout, /: valid \(\/usr\/local\/bin\/hwbreak, pid 42, 4 memory regions/);
    t.match(r.stdout, new RegExp(`restorer=${restorer}`));
    t.match(r.stdout, /INJECT_SYSCALL pid 0 nr 12 \(0x100c5000\) \(expect 0x100c5000\)\n\s+grow the heap/);
    t.match(r.stdout, /POKEUSER pid 0 offset 904 = 0x1\n\s+debug register DR7/, 'DR7 last');
  }
});

t.test('refusals and usage', async (t) => {
  const file = path.join(await mkdtemp(path.join(tmpdir(), 'crh-dry-')), 'image.tar');
  await writeCheckpointImage(syntheticImage(), file);
  const refused = await execa(process.execPath, [crh, 'restore', '--dry-run', file, '--rf', 'reject'], { reject: false });
  t.equal(refused.exitCode, 1, 'an image the policy refuses is a failure, not infrastructure');
  t.match(refused.stderr, /ImageRejectedError: regs\.json: eflags\.RF/);
  const usage = await execa(process.execPath, [crh, 'restore', file], { reject: false });
  t.equal(usage.exitCode, 2);
  const badPolicy = await execa(process.execPath, [crh, 'restore', '--dry-run', file, '--restorer', 'iret'], { reject: false });
  t.not(badPolicy.exitCode, 0);
  t.match(badPolicy.stderr, /unknown restorer "iret"/);
});
