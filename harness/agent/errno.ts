import { constants } from 'node:os';

const NAMES = new Map<number, string>(Object.entries(constants.errno).map(([name, num]) => [num, name]));

/** "ESRCH (3)" for an errno number, as the agent reports it. */
export function errnoName(errno: number): string {
  const name = NAMES.get(errno);
  return name ? `${name} (${errno})` : `errno ${errno}`;
}
