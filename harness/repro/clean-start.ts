/**
 * Every run of a reproducer starts clean: nothing a previous run left
 * running, and a working directory holding only the --file inputs. Without
 * this, runs leak into each other — the uninterrupted run's daemon keeps
 * running, and a file it created makes the checkpointed run's O_EXCL
 * create fail with EEXIST.
 *
 * What a run leaves running is below the agent: the agent is a child
 * subreaper, so a daemon whose parent exited is the agent's child (the
 * native runner crh-native is one too, and kills its own leftovers). The
 * working directory is emptied in place rather than replaced: the agent
 * runs in it, and a spawned program inherits the agent's directory — a
 * replaced one would leave both in a deleted directory.
 */
import { shellQuote } from '../machine/qemu-args.ts';

/** How often the kill is repeated: a leftover may fork while it is collected. */
const KILL_ROUNDS = 5;

/**
 * The guest shell command that kills every live descendant of every
 * process named `agentName` (the agent's) (zombies are skipped: the agent reaps them;
 * so is an agent itself: a session the agent port's supervisor forked, which
 * carries the same name, is not a leftover), printing
 * "killed PID..." per round that found any, and then empties `workDir`
 * (dot files too) and makes it 0755 again.
 */
export function cleanStartCommand(workDir: string, agentName = 'crh-agent'): string {
  const dir = shellQuote(workDir);
  return [
    'descendants() { for c in $(cat /proc/$1/task/*/children 2>/dev/null); do echo $c; descendants $c; done; }',
    `for round in ${Array.from({ length: KILL_ROUNDS }, (_, i) => i + 1).join(' ')}; do`,
    '  live=""',
    `  agents=" $(pidof ${shellQuote(agentName)}) "`,
    '  for a in $agents; do for p in $(descendants $a); do',
    '    case "$agents" in *" $p "*) continue;; esac',
    '    state=$(sed -n "s/.*) \\(.\\) .*/\\1/p" /proc/$p/stat 2>/dev/null)',
    '    [ -n "$state" ] && [ "$state" != Z ] && live="$live $p"',
    '  done; done',
    '  [ -z "$live" ] && break',
    '  echo "killed$live"',
    '  kill -9 $live 2>/dev/null',
    '  sleep 0.1',
    'done',
    `rm -rf -- ${dir}/* ${dir}/.[!.]* ${dir}/..?*`,
    `chmod 0755 ${dir}`,
  ].join('\n');
}

/** The pids a cleanStartCommand run reports killed, in order, each once. */
export function killedPids(output: string): number[] {
  const pids = output
    .split('\n')
    .filter((l) => l.startsWith('killed '))
    .flatMap((l) => l.slice(7).trim().split(/\s+/).map(Number));
  return [...new Set(pids)].filter((p) => Number.isInteger(p) && p > 0);
}
