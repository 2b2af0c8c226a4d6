/**
 * An image's xstate regsets fitted to the restore target's XSAVE layout.
 * PTRACE_SETREGSET of NT_X86_XSTATE takes exactly the target kernel's user
 * xstate size (xstateregs_set: anything else is EFAULT), which is the
 * checkpoint CPU's only on the same model: measured, an image taken under
 * -cpu Skylake-Client (XCR0 0x7, 832 bytes) fails with EFAULT under -cpu
 * max (XCR0 0x21f). The regset is the standard (non-compacted) XSAVE
 * format: each component at its architectural offset, so the image's bytes
 * keep their places — padded with zeros (components past its end are in
 * their init state: XSTATE_BV does not name them) or cut where the target's
 * layout ends (the dependency check already refused a component in use
 * that the target lacks). The XCR0 word ptrace reports in the legacy
 * area's sw_reserved bytes is the kernel's, not the process's: the
 * target's goes there, as its kernel will read it back.
 */
import type { CheckpointImage } from './image-model.ts';

/** Where ptrace's xstate regset holds XCR0 (USER_XSTATE_XCR0_WORD, the first sw_reserved word). */
const XCR0_OFFSET = 464;

/** One regset at `size` bytes with the target's XCR0 word, or `xstate` itself when it fits already. */
export function fitXstate(xstate: Buffer, size: number, targetXcr0: bigint | null): Buffer {
  if (xstate.length === size) return xstate;
  const fitted = Buffer.alloc(size);
  xstate.copy(fitted, 0, 0, Math.min(size, xstate.length));
  if (targetXcr0 !== null && size >= XCR0_OFFSET + 8) fitted.writeBigUInt64LE(targetXcr0, XCR0_OFFSET);
  return fitted;
}

/** The image with every thread's xstate fitted to the target's size (unchanged when it is the same). */
export function withFittedXstate(image: CheckpointImage, size: number, targetXcr0: bigint | null): { image: CheckpointImage; note?: string } {
  if (image.xstate.length === size && image.threads.every((t) => t.xstate.length === size)) return { image };
  return {
    image: {
      ...image,
      xstate: fitXstate(image.xstate, size, targetXcr0),
      threads: image.threads.map((t) => ({ ...t, xstate: fitXstate(t.xstate, size, targetXcr0) })),
    },
    note: `xstate fitted to the target's XSAVE layout: ${image.xstate.length} → ${size} bytes (standard format, components in place)`,
  };
}
