/**
 * x86-64 user register state as the Linux ptrace ABI lays it out
 * (struct user_regs_struct, <sys/user.h>), plus the EFLAGS and debug-register
 * facts the restore core reasons about.
 */

/** Field order of struct user_regs_struct: 27 unsigned 64-bit values. */
export const USER_REGS_FIELDS = [
  'r15',
  'r14',
  'r13',
  'r12',
  'rbp',
  'rbx',
  'r11',
  'r10',
  'r9',
  'r8',
  'rax',
  'rcx',
  'rdx',
  'rsi',
  'rdi',
  'orig_rax',
  'rip',
  'cs',
  'eflags',
  'rsp',
  'ss',
  'fs_base',
  'gs_base',
  'ds',
  'es',
  'fs',
  'gs',
] as const;

export type UserRegName = (typeof USER_REGS_FIELDS)[number];
export type UserRegs = Record<UserRegName, bigint>;

export const USER_REGS_SIZE = USER_REGS_FIELDS.length * 8;

/** Decodes a raw struct user_regs_struct (216 bytes, little-endian). */
export function decodeUserRegs(raw: Uint8Array): UserRegs {
  if (raw.length !== USER_REGS_SIZE) {
    throw new RangeError(`user_regs_struct must be ${USER_REGS_SIZE} bytes, got ${raw.length}`);
  }
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const regs = {} as UserRegs;
  USER_REGS_FIELDS.forEach((name, i) => {
    regs[name] = view.getBigUint64(i * 8, true);
  });
  return regs;
}

export function encodeUserRegs(regs: UserRegs): Buffer {
  const raw = Buffer.alloc(USER_REGS_SIZE);
  USER_REGS_FIELDS.forEach((name, i) => raw.writeBigUInt64LE(BigInt.asUintN(64, regs[name]), i * 8));
  return raw;
}

/** EFLAGS bits by name (Intel SDM vol. 1, 3.4.3). */
export const EFLAGS = {
  CF: 1n << 0n,
  FIXED1: 1n << 1n,
  PF: 1n << 2n,
  AF: 1n << 4n,
  ZF: 1n << 6n,
  SF: 1n << 7n,
  TF: 1n << 8n,
  IF: 1n << 9n,
  DF: 1n << 10n,
  OF: 1n << 11n,
  IOPL0: 1n << 12n,
  IOPL1: 1n << 13n,
  NT: 1n << 14n,
  RF: 1n << 16n,
  VM: 1n << 17n,
  AC: 1n << 18n,
  VIF: 1n << 19n,
  VIP: 1n << 20n,
  ID: 1n << 21n,
} as const;

/**
 * The flags a user task may legitimately carry into a restart (the 2009
 * "c/r: tolerate X86_EFLAGS_RF on restart" rule). Every other bit must equal
 * exactly IF | bit 1.
 */
export const EFLAGS_USER_CHANGEABLE =
  EFLAGS.CF | EFLAGS.PF | EFLAGS.AF | EFLAGS.ZF | EFLAGS.SF | EFLAGS.TF | EFLAGS.DF | EFLAGS.OF | EFLAGS.NT | EFLAGS.AC | EFLAGS.ID | EFLAGS.RF;

export const EFLAGS_REQUIRED_FIXED = EFLAGS.IF | EFLAGS.FIXED1;

/** Names of the set bits of `value` (unnamed bits as "bitN"). */
export function eflagsBitNames(value: bigint): string[] {
  const names: string[] = [];
  for (let bit = 0n; bit < 64n; bit++) {
    const mask = 1n << bit;
    if ((value & mask) === 0n) continue;
    const named = Object.entries(EFLAGS).find(([, m]) => m === mask);
    names.push(named ? named[0] : `bit${bit}`);
  }
  return names;
}

/** offsetof(struct user, u_debugreg) on x86-64: PEEKUSER/POKEUSER offsets of DR0–DR7. */
export const USER_DEBUGREG_OFFSET = 848;

export function debugRegOffset(index: number): number {
  if (!Number.isInteger(index) || index < 0 || index > 7) throw new RangeError(`no debug register DR${index}`);
  return USER_DEBUGREG_OFFSET + index * 8;
}

/** The debug registers ptrace exposes that carry state (DR4/DR5 are aliases). */
export const DEBUG_REG_INDICES = [0, 1, 2, 3, 6, 7] as const;

/** ELF note type of the XSAVE area for PTRACE_GETREGSET. */
export const NT_X86_XSTATE = 0x202;

export const USER_CS = 0x33n;
export const USER_SS = 0x2bn;

/** Top of the x86-64 user address space with 4-level paging (TASK_SIZE_MAX). */
export const USER_SPACE_END = 0x7fff_ffff_f000n;

export function hex(value: bigint | number): string {
  return `0x${value.toString(16)}`;
}
