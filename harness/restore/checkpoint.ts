/**
 * Takes a checkpoint of a process stopped under the agent: registers,
 * xstate, debug registers, the memory map and the contents of every mapping
 * isDumped() selects. The result is an in-memory image; writing it is
 * checkpoint-image.ts's job.
 */
import type { AgentClient } from '../agent/client.ts';
import { NT_X86_XSTATE, debugRegOffset } from '../x86/registers.ts';
import { DEBUG_REG_NAMES, memoryEntryName, type CheckpointImage, type DebugRegs, type PlatformFacts, type ProcessInfo } from './checkpoint-image.ts';
import { isDumped, parseMaps } from './proc-maps.ts';

/** Generous bound for the XSAVE area (AVX-512 needs ~2.7 KiB, AMX ~11 KiB). */
const XSTATE_MAX_BYTES = 16 * 1024;
const READ_CHUNK_BYTES = 1024 * 1024;

export async function checkpointProcess(agent: AgentClient, process: ProcessInfo, platform: PlatformFacts): Promise<CheckpointImage> {
  const pid = process.pid;
  const regs = await agent.call({ op: 'GETREGS', pid });
  const xstate = await agent.call({ op: 'GETREGSET', pid, noteType: NT_X86_XSTATE, maxSize: XSTATE_MAX_BYTES });
  const debugRegs = {} as DebugRegs;
  for (const name of DEBUG_REG_NAMES) debugRegs[name] = await agent.call({ op: 'PEEKUSER', pid, offset: debugRegOffset(Number(name.slice(2))) });
  const maps = (await agent.call({ op: 'READ_FILE', path: `/proc/${pid}/maps`, maxSize: 1 << 20 })).toString('utf8');

  const regions: CheckpointImage['regions'] = [];
  const memory = new Map<string, Buffer>();
  for (const m of parseMaps(maps).filter(isDumped)) {
    const entry = memoryEntryName(regions.length);
    const chunks: Buffer[] = [];
    for (let at = m.start; at < m.end; at += BigInt(READ_CHUNK_BYTES)) {
      const length = Number(m.end - at < BigInt(READ_CHUNK_BYTES) ? m.end - at : BigInt(READ_CHUNK_BYTES));
      chunks.push(await agent.call({ op: 'READ_MEM', pid, address: at, length }));
    }
    regions.push({ start: m.start, end: m.end, perms: m.perms, name: m.name, entry });
    memory.set(entry, Buffer.concat(chunks));
  }
  return { created: new Date().toISOString(), process, platform, regs, xstate, debugRegs, maps, regions, memory };
}
