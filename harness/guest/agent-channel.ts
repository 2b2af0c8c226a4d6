/**
 * The way to a machine's agent: its agent port when the machine has one and
 * the guest serves it (agent/port-transport.ts), else an SSH exec of the
 * agent — the log says which, and why when it is SSH. Either way one agent
 * process serves the session, and its losses are infrastructure: the
 * connection dropped, the agent killed by SIGKILL (session-loss.ts).
 */
import { AgentClient } from '../agent/client.ts';
import type { HelloResult } from '../agent/ops.ts';
import { connectAgentPort } from '../agent/port-transport.ts';
import { InfraError } from '../errors.ts';
import type { QemuMachine } from '../machine/machine.ts';
import { shellQuote } from '../machine/qemu-args.ts';
import { agentKilled } from './session-loss.ts';
import { AGENT_PORT_START_MS, consoleSaysNoPort } from '../machine/agent-session.ts';

export { AGENT_PORT_START_MS, NO_AGENT_PORT_LINE } from '../machine/agent-session.ts';

export interface AgentChannel {
  client: AgentClient;
  hello: HelloResult;
  /** 'port': the agent port; 'ssh': an SSH exec channel */
  via: 'port' | 'ssh';
  /** why the agent port was not used (undefined when it was) */
  portUnavailable: string | undefined;
  /** what ends the session other than the machine: the failures AgentClient.failWhen races with the machine's */
  losses: Promise<never>[];
  /** Drops the agent's connection as a lost link would (fault injection). */
  drop(): void;
}

/**
 * Opens the agent session of `machine` in `cwd` (created first; default:
 * root's home, as an SSH login). Over the port the session is the guest
 * supervisor's; over SSH it is `cd CWD && exec AGENT`.
 */
export async function openAgentChannel(machine: QemuMachine, agentPath: string, cwd: string | undefined, log: (line: string) => void): Promise<AgentChannel> {
  let portUnavailable: string | undefined;
  const claimed = machine.claimAgentPort();
  if (!claimed) portUnavailable = 'the agent port carries one session per machine and it was taken';
  else {
    try {
      // The machine's own session (saved waiting, or opened before its state was saved), else a new one.
      const port =
        'session' in claimed
          ? claimed.session
          : await connectAgentPort(claimed.socket, { startTimeoutMs: AGENT_PORT_START_MS, giveUp: consoleSaysNoPort(machine.console) });
      const { client, hello } = await AgentClient.open(port);
      try {
        if (cwd) await client.call({ op: 'CHDIR', path: cwd });
      } catch (error) {
        await client.close();
        throw error;
      }
      log(`agent: over the agent port (pid ${hello.agentPid})`);
      return {
        client,
        hello,
        via: 'port',
        portUnavailable: undefined,
        losses: [port.lost, agentKilled(port.exit)],
        drop: () => port.drop(),
      };
    } catch (error) {
      // A guest without a serving port is a guest of another build: SSH serves. Anything else stands.
      if (!(error instanceof InfraError) || !/^agent port /.test(error.message)) throw error;
      portUnavailable = error.message;
    }
  }
  log(`agent: over SSH (${portUnavailable})`);
  let command = agentPath;
  if (cwd) {
    await machine.ssh.run(`mkdir -p ${shellQuote(cwd)}`);
    command = `cd ${shellQuote(cwd)} && exec ${agentPath}`;
  }
  const transport = await machine.ssh.transport(command);
  const { client, hello } = await AgentClient.open(transport);
  return {
    client,
    hello,
    via: 'ssh',
    portUnavailable,
    losses: [agentKilled(transport.exit)],
    drop: () => machine.ssh.dropConnection(),
  };
}
