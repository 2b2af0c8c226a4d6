/** What goes into a bundle, entry by entry (bundle.ts writes it). */
import { readFile } from 'node:fs/promises';
import type { BundleEntry } from './bundle.ts';
import type { GuestRuns } from './guest-runs.ts';
import type { ReproRequest } from './options.ts';
import type { PreparedProgram } from './prepare.ts';
import { formatRegisterDiff } from './register-diff.ts';
import { rerunScript, type BundleInputs } from './rerun.ts';
import { GUEST_DIRS } from './runs.ts';
import { verdictLabel, type ReproVerdict } from './verdict.ts';

export interface BundleSources {
  request: ReproRequest;
  prepared: PreparedProgram;
  runs: GuestRuns;
  inputs: BundleInputs;
  verdict: ReproVerdict;
  /** host files written during the run */
  imageFile: string;
  consoleLog: string;
}

export async function bundleContents(s: BundleSources): Promise<BundleEntry[]> {
  const { request, prepared, runs, inputs, verdict } = s;
  const { checkpointed } = runs;
  const text = (name: string, value: string, mode?: number): BundleEntry => ({ name, data: Buffer.from(value), ...(mode ? { mode } : {}) });
  return [
    text('verdict.json', `${JSON.stringify(verdict, null, 2)}\n`),
    text('rerun.sh', rerunScript(verdict.rerunCommand, `${verdictLabel(verdict)} — ${verdict.summary}`), 0o755),
    text('README.txt', readme(verdict)),
    ...(request.source ? [{ name: inputs.source!, data: await readFile(request.source) }] : []),
    { name: inputs.binary, data: prepared.program.data, mode: 0o755 },
    ...prepared.files.map((f, i) => ({ name: inputs.files[i]!, data: f.data, mode: f.mode })),
    ...(checkpointed.engine === 'crh' ? [{ name: 'checkpoint.tar', data: await readFile(s.imageFile) }] : []),
    ...(checkpointed.criu
      ? [
          text('criu/dump.log', checkpointed.criu.dumpLog),
          ...(checkpointed.criu.restoreLog !== undefined ? [text('criu/restore.log', checkpointed.criu.restoreLog)] : []),
        ]
      : []),
    { name: 'console.log', data: await readFile(s.consoleLog).catch(() => Buffer.from('(no console log)\n')) },
    text(
      'register-diff.txt',
      formatRegisterDiff({
        // CRIU's images are not read by crh: its side is the registers the agent read at the checkpoint stop.
        image: checkpointed.image?.regs ?? checkpointed.regsAtCheckpoint,
        ...(checkpointed.restoredRegs ? { restored: checkpointed.restoredRegs } : {}),
        policy: request.policy,
        kernel: checkpointed.restoreDifferences,
        ...(checkpointed.rewind ? { rewound: checkpointed.rewind.note } : {}),
      }),
    ),
    text('platform-profile.json', `${JSON.stringify(runs.profile, null, 2)}\n`),
    text('output/native.out', runs.native.output),
    text('output/reference.out', runs.reference.output),
    ...(checkpointed.restoreError === undefined ? [text('output/restored.out', checkpointed.run.output)] : []),
  ];
}

function readme(verdict: ReproVerdict): string {
  const row = (name: string, what: string): string => `${name.padEnd(22)} ${what}`;
  return [
    `cr-harness reproducer bundle: ${verdict.program.name}`,
    '',
    `verdict: ${verdictLabel(verdict)} — ${verdict.summary}`,
    `policy: ${verdict.policy}`,
    '',
    row('verdict.json', "the verdict, both runs, the mismatches, the restore's report, the platform"),
    row('rerun.sh', 'reruns it: from a cr-harness clone, `sh DIR/rerun.sh` (or `crh repro --bundle THIS.tar`)'),
    ...(verdict.program.source ? [row(verdict.program.source, 'the reproducer')] : []),
    row(verdict.program.binary, `the program as it ran in the guest (${verdict.program.guestPath})`),
    ...verdict.program.files.map((f) => row(f, `copied into its working directory (${GUEST_DIRS.work})`)),
    ...(verdict.engine === 'criu'
      ? [
          row('criu/', "CRIU's dump and restore logs (-v4); its images stayed in the guest"),
          row('register-diff.txt', 'registers at the checkpoint stop vs in the restored process'),
        ]
      : [
          row('checkpoint.tar', 'the checkpoint image (crh restore --dry-run checkpoint.tar shows its restore plan)'),
          row('register-diff.txt', 'registers in the image vs in the restored process'),
        ]),
    row('console.log', "the guest's serial console"),
    row('platform-profile.json', 'what the host, QEMU and guest kernel measurably do'),
    row('output/', 'what the program printed: native (no tracer), uninterrupted (traced), and original + restored'),
    '',
  ].join('\n');
}
