// expect: --restore-cpu, --restore-kernel and --restore-anyway parse into the request (and back into rerun flags),
// every misuse is a UsageError naming the flag; --kernel debian:PACKAGE@SUITE names a suite, checked; QEMU gets the
// CPU model as one -cpu argument.
import t from 'tap';
import { parseReproArgs, requestFlags, type ReproRequest } from '../harness/repro/options.ts';
import { parseCpuModel } from '../harness/repro/restore-elsewhere.ts';
import { BundleRejectedError, UsageError } from '../harness/repro/usage-error.ts';
import { parseRerunRecord, rerunRecord } from '../harness/repro/rerun-record.ts';
import { requestFromRecord } from '../harness/repro/bundle-rerun.ts';
import { resolveKernelFlag } from '../harness/flags/kernel-flags.ts';
import { splitDebianSpec } from '../harness/image/kernel.ts';
import { cpuModelOf, machineArgs } from '../harness/machine/qemu-args.ts';

const base = ['x.c', '--checkpoint-at', 'f'];

t.test('the three flags reach the request and come back as rerun flags', async (t) => {
  const r = parseReproArgs('repro', [
    ...base,
    '--restore-cpu',
    'max,-avx',
    '--restore-kernel',
    'debian:linux-image-cloud-amd64@trixie',
    '--restore-anyway',
  ]) as ReproRequest;
  t.same(r.elsewhere, { cpu: 'max,-avx', kernel: 'debian:linux-image-cloud-amd64@trixie', anyway: true });
  const flags = requestFlags(r);
  t.match(flags.join(' '), /--restore-cpu max,-avx --restore-kernel debian:linux-image-cloud-amd64@trixie --restore-anyway/);
  const again = parseReproArgs('repro', ['x.c', ...flags]) as ReproRequest;
  t.same(again.elsewhere, r.elsewhere, 'parsed back the same');
  t.equal((parseReproArgs('repro', base) as ReproRequest).elsewhere, undefined, 'none given: restored where checkpointed');
  t.same((parseReproArgs('cr', ['--binary', '/bin/true', '--when-ready', '--restore-cpu', 'Skylake-Client']) as ReproRequest).elsewhere, {
    cpu: 'Skylake-Client',
    anyway: false,
  });
});

t.test('misuse is a UsageError naming the flag', async (t) => {
  const usage = (args: string[], re: RegExp): void => {
    try {
      parseReproArgs('repro', args);
      t.fail(`${args.join(' ')}: accepted`);
    } catch (error) {
      t.ok(error instanceof UsageError, `${args.join(' ')}: UsageError`);
      t.match((error as Error).message, re);
    }
  };
  usage([...base, '--restore-anyway'], /--restore-anyway goes with --restore-cpu or --restore-kernel/);
  usage([...base, '--restore-cpu', 'max;reboot'], /--restore-cpu: "max;reboot" is not a QEMU CPU model/);
  usage([...base, '--restore-cpu=-max'], /not a QEMU CPU model/);
  usage([...base, '--restore-cpu', 'max', '--engine', 'criu'], /--engine criu/);
  usage([...base, '--restore-cpu', 'max', '--cycles', '3'], /moves the process once/);
  usage([...base, '--restore-kernel', 'debian:linux-image-amd64@Trixie!'], /not a Debian suite name/);
  usage([...base, '--restore-kernel', 'debian:--help'], /not a Debian package name/);
});

t.test('CPU models QEMU spells', async (t) => {
  for (const ok of ['max', 'max,-avx', 'max,-pku', 'Skylake-Client', 'Skylake-Client-v4', 'max,avx=off', 'qemu64,+sse4.2'])
    t.equal(parseCpuModel('--restore-cpu', ok), ok);
  for (const bad of ['', 'max,,', 'max -avx', 'max,-avx;', '$(id)', 'max,=on'])
    t.throws(() => parseCpuModel('--restore-cpu', bad), UsageError, JSON.stringify(bad));
  t.equal(cpuModelOf({ accel: 'tcg' }), 'max');
  t.equal(cpuModelOf({ accel: 'kvm' }), 'host');
  const args = machineArgs({ accel: 'tcg', memoryMiB: 256, cpus: 1, cpuModel: 'max,-avx' });
  t.equal(args[args.indexOf('-cpu') + 1], 'max,-avx', 'one -cpu argument, as given');
});

t.test('debian:PACKAGE@SUITE', async (t) => {
  t.same(splitDebianSpec('linux-image-cloud-amd64@bookworm-backports'), { name: 'linux-image-cloud-amd64', suite: 'bookworm-backports' });
  t.same(splitDebianSpec('linux-image-cloud-amd64'), { name: 'linux-image-cloud-amd64' });
  t.equal(resolveKernelFlag('kernel', 'debian:linux-image-6.12.117+deb13-cloud-amd64@trixie'), 'debian:linux-image-6.12.117+deb13-cloud-amd64@trixie');
  t.equal(resolveKernelFlag('kernel', 'new=debian:linux-image-cloud-amd64@trixie'), 'new=debian:linux-image-cloud-amd64@trixie', 'a label stays in front');
  t.throws(() => resolveKernelFlag('kernel', 'debian:linux-image-amd64@'), UsageError, 'an empty suite');
  t.throws(() => resolveKernelFlag('kernel', 'debian:linux-image-amd64@../x'), UsageError);
});

t.test('a bundle carries --restore-cpu and --restore-anyway, checked; never a restore kernel', async (t) => {
  const request = parseReproArgs('repro', [...base, '--restore-cpu', 'max,-pku', '--restore-anyway']) as ReproRequest;
  const record = rerunRecord(request, { source: 'source/x.c', binary: 'binary/x', files: [] });
  t.equal(record.restoreCpu, 'max,-pku');
  t.equal(record.restoreAnyway, true);
  const parsed = parseRerunRecord(JSON.parse(JSON.stringify(record)), 'b.tar');
  t.equal(parsed.restoreCpu, 'max,-pku', 'read back from the bundle');
  t.same(
    requestFromRecord(parsed, new Map([['source/x.c', '/tmp/x.c']]), { out: '/tmp/o.tar' }).elsewhere,
    { cpu: 'max,-pku', anyway: true },
    'and rerun elsewhere',
  );
  const hostile = (edit: Record<string, unknown>, re: RegExp): void => {
    try {
      parseRerunRecord({ ...JSON.parse(JSON.stringify(record)), ...edit }, 'b.tar');
      t.fail(`accepted ${JSON.stringify(edit)}`);
    } catch (error) {
      t.ok(error instanceof BundleRejectedError, `refused ${JSON.stringify(edit)}`);
      t.match((error as Error).message, re);
    }
  };
  hostile({ restoreCpu: 'max -device x' }, /restoreCpu/);
  hostile({ restoreCpu: 7 }, /restoreCpu/);
  hostile({ restoreAnyway: 'yes' }, /restoreAnyway/);
  hostile({ restoreCpu: undefined }, /restoreAnyway.*goes with restoreCpu/);
  hostile({ restoreKernel: 'debian:linux-image-amd64@trixie' }, /never taken from a bundle/);
});
