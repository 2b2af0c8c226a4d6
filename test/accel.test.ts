// expect: the accelerator is chosen by evidence — the real guest booted under it — with the reason and what was seen cached per QEMU, boot files and host CPU; a KVM whose firmware probe passes but whose kernel dies with "KVM internal error" (a fake QEMU) leads to TCG within 10 s.
import t from 'tap';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chooseAccelerator, decisionLocation, forcedAccelerator, probeAccelerator } from '../harness/machine/accel.ts';
import { probeBoot } from '../harness/machine/boot-probe.ts';
import { bootFilesOf } from '../harness/machine/machine.ts';
import { buildImage } from '../harness/image/build.ts';
import type { BootFiles } from '../harness/machine/qemu-args.ts';
import { describeAccelEvidence, profileFacts, profileRows, type PlatformProfile } from '../harness/platform/profile.ts';

const FAKE_QEMU = path.join(import.meta.dirname, 'support', 'fake-qemu', 'kvm-internal-error.sh');

/** Runs `body` with CRH_QEMU pointing at `binary`, restoring the environment after. */
async function withQemu<T>(binary: string, body: () => Promise<T>): Promise<T> {
  const saved = { qemu: process.env.CRH_QEMU, accel: process.env.CRH_ACCEL };
  process.env.CRH_QEMU = binary;
  delete process.env.CRH_ACCEL;
  try {
    return await body();
  } finally {
    if (saved.qemu === undefined) delete process.env.CRH_QEMU;
    else process.env.CRH_QEMU = saved.qemu;
    if (saved.accel !== undefined) process.env.CRH_ACCEL = saved.accel;
  }
}

t.test('TCG runs the probe firmware to its isa-debug-exit', async (t) => {
  t.equal(await probeAccelerator('tcg'), null);
});

t.test('the evidence boot reaches the guest init marker under TCG, and a kernel that cannot reach init is not evidence', async (t) => {
  const image = await buildImage();
  const boot = bootFilesOf(image);
  const good = await probeBoot('tcg', boot, { timeoutMs: 60_000 });
  t.ok(good.booted, `booted: ${good.evidence.seen}`);
  t.match(good.evidence.seen, /console: .*crh: ready/);
  t.equal(good.evidence.qmpStatus, 'running');
  t.comment(`measured: evidence boot under TCG reached the marker in ${good.evidence.elapsedMs} ms`);

  const noInit: BootFiles = { ...boot, cmdline: [...boot.cmdline, 'rdinit=/nonexistent', 'root=/dev/nonexistent'] };
  const bad = await probeBoot('tcg', noInit, { timeoutMs: 60_000 });
  t.notOk(bad.booted, `not booted: ${bad.evidence.seen}`);
  t.match(bad.evidence.seen, /Kernel panic|QEMU exited/, 'what was seen names the death');
  t.match(bad.evidence.consoleTail, /Kernel panic/, 'the console tail is kept as evidence');
});

t.test('the choice on this host names its reason and evidence', async (t) => {
  const image = await buildImage();
  const choice = await chooseAccelerator(bootFilesOf(image));
  t.ok(['kvm', 'tcg'].includes(choice.accel));
  t.ok(choice.reason.length > 0, `${choice.accel}: ${choice.reason}`);
  if (choice.accel === 'tcg') t.comment(`platform deviation recorded: ${choice.reason}`);
  if (!choice.forced && choice.reason !== '/dev/kvm is absent or not accessible') t.ok(choice.evidence, 'evidence kept with the decision');
});

t.test('a KVM whose kernel dies with "KVM internal error" leads to TCG within 10 s, cached with the evidence', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-accel-test-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  // Boot files the fake never reads, unique to this run so the decision is made afresh.
  const boot: BootFiles = { kernel: path.join(dir, 'bzImage'), initrd: path.join(dir, 'initramfs'), cmdline: ['console=ttyS0'] };
  await writeFile(boot.kernel, `kernel ${dir}`);
  await writeFile(boot.initrd, `initramfs ${dir}`);
  const kvmDevice = path.join(dir, 'kvm'); // the fake's KVM needs no device; this host's real one must not decide
  await writeFile(kvmDevice, '');

  await withQemu(FAKE_QEMU, async () => {
    t.equal(await probeAccelerator('kvm'), null, 'the real-mode firmware probe passes: it is no evidence');
    const { file } = await decisionLocation(boot);
    await rm(file, { force: true });
    const started = Date.now();
    const choice = await chooseAccelerator(boot, { kvmDevice });
    const elapsed = Date.now() - started;
    t.equal(choice.accel, 'tcg');
    t.match(choice.reason, /^kvm failed: (stderr: KVM internal error\. Suberror: 1|QMP status internal-error)/);
    t.ok(elapsed < 10_000, `decided in ${elapsed} ms`);
    t.match(choice.evidence?.stderrTail, /KVM internal error\. Suberror: 1[\s\S]*emulation failure/, 'QEMU stderr kept');
    t.equal(choice.evidence?.consoleTail, '', 'the console stayed empty');
    t.ok(choice.evidence!.elapsedMs < 10_000, `evidence elapsed ${choice.evidence?.elapsedMs} ms`);

    const record = JSON.parse(await readFile(file, 'utf8')) as { choice: { accel: string; reason: string }; keyedBy: Record<string, string> };
    t.equal(record.choice.accel, 'tcg', 'the decision is cached');
    t.equal(record.choice.reason, choice.reason);
    t.match(record.keyedBy.qemu, /kvm-internal-error\.sh 7\./, 'keyed by the QEMU binary and version');
    t.match(record.keyedBy.hostCpu, /\S/, 'and the host CPU model');
    t.equal((await stat(path.dirname(file))).mode & 0o777, 0o700, 'the cache directory is private');

    const again = await chooseAccelerator(boot, { kvmDevice });
    t.equal(again.reason, choice.reason, 'the second choice reads the decision, it does not probe again');
  });
});

t.test('a forced tcg is the choice without probing; CRH_ACCEL itself is read by the run configuration alone', async (t) => {
  t.same(await forcedAccelerator('tcg'), { accel: 'tcg', reason: 'CRH_ACCEL=tcg', forced: true });
  const boot: BootFiles = { kernel: '/nonexistent', initrd: '/nonexistent', cmdline: [] };
  const saved = process.env.CRH_ACCEL;
  t.teardown(() => {
    if (saved === undefined) delete process.env.CRH_ACCEL;
    else process.env.CRH_ACCEL = saved;
  });
  // Not an override here any more: the decision goes by evidence (no boot files: TCG, saying why), whatever the variable says.
  process.env.CRH_ACCEL = 'hvf';
  const choice = await chooseAccelerator(boot, { kvmDevice: '/nonexistent-kvm' });
  t.equal(choice.accel, 'tcg');
  t.notOk(choice.forced, 'not forced: the variable was not read');
});

t.test('the platform profile shows the accelerator, its reason and the evidence', async (t) => {
  const evidence = {
    seen: 'stderr: KVM internal error. Suberror: 1',
    elapsedMs: 712,
    qmpStatus: 'internal-error',
    stderr: 'KVM internal error. Suberror: 1',
    console: '',
    decidedAt: '2026-12-04T23:00:00.000Z',
  };
  t.equal(
    describeAccelEvidence(evidence),
    'stderr: KVM internal error. Suberror: 1; QMP status internal-error; 712 ms; stderr: KVM internal error. Suberror: 1; console empty; decided 2026-12-04T23:00:00.000Z',
  );
  const profile = {
    qemu: '7.2',
    accel: 'tcg',
    accelReason: 'kvm failed: stderr: KVM internal error. Suberror: 1',
    accelEvidence: evidence,
    cpuModel: 'max',
    guestCpu: 'QEMU TCG CPU',
    cpuFlags: [],
    xcr0: '0x7',
    xsaveBytes: 832,
    kernelRelease: '6.1',
    kernelOrigin: 'test',
    kernelConfig: {},
    kernelSymbols: 'x',
    probes: {
      rfOnUserPageFault: { value: null, how: '' },
      rfAtHwBreakpointStop: { value: null, how: '' },
      rseqDeprecatedFlagsRejected: { value: null, how: '' },
    },
  } as unknown as PlatformProfile;
  const rows = new Map(profileRows(profile));
  t.equal(rows.get('accelerator'), 'tcg (kvm failed: stderr: KVM internal error. Suberror: 1)');
  t.match(rows.get('accelerator evidence'), /QMP status internal-error; 712 ms/);
  t.match(String(profileFacts(profile).accelEvidence), /internal-error/, 'checkpoint images record it too');
});
