/**
 * A case's native reference: its workload run with no tracer and no
 * breakpoint (guest/native-run.ts), once per guest and workload, so that a
 * case can check that the reference it trusts — a run under the agent — is
 * what the program does on its own. The working directory is the SSH exec's
 * own, which is the case agent's too; the pid is whatever fork gives.
 */
import path from 'node:path';
import { runNatively, type NativeRun } from '../guest/native-run.ts';
import type { Guest } from './guest-fixture.ts';
import { readOutput, RUN_TIMEOUT_MS, type Workload } from './scenario.ts';

const runs = new WeakMap<Guest, Map<string, Promise<NativeRun>>>();

export function nativeReference(guest: Guest, w: Workload): Promise<NativeRun> {
  const key = JSON.stringify([w.binary, w.argv, w.envp ?? []]);
  let byWorkload = runs.get(guest);
  if (!byWorkload) runs.set(guest, (byWorkload = new Map()));
  let run = byWorkload.get(key);
  if (!run) {
    const stdoutPath = `/tmp/${path.basename(w.binary)}-native-${byWorkload.size}.out`;
    run = runNatively(
      { shell: (command) => guest.machine.ssh.run(command), readFile: (file) => readOutput(guest, file) },
      { binary: w.binary, argv: w.argv, envp: w.envp ?? [], stdoutPath, timeoutMs: RUN_TIMEOUT_MS },
    );
    byWorkload.set(key, run);
  }
  return run;
}

/** How a run ended, in the words both kinds of run share: "exited 0", "killed 5". */
export function endedAs(run: { outcome: string; code: number }): string {
  return `${run.outcome} ${run.code}`;
}
