import { spawn } from 'node:child_process';
import type { AgentTransport } from './client.ts';

/**
 * Runs the agent as a local child process — the same binary the guest runs,
 * on the host's own kernel — so the protocol can be tested without QEMU.
 */
export function localAgentTransport(agentPath: string): AgentTransport {
  const child = spawn(agentPath, [], { stdio: ['pipe', 'pipe', 'pipe'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    input: child.stdin,
    output: child.stdout,
    stderr: child.stderr,
    close: async () => {
      child.stdin.end();
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    },
  };
}
