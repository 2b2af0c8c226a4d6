/**
 * The checkpoint image: what callers read and write. Reading is the tar
 * codec (image-tar.ts) producing an untrusted image, then validation
 * (validate.ts) producing a CheckpointImage whose every value is in range;
 * the model itself lives in image-model.ts, the ground floor of restore/,
 * and is re-exported here for the code above restore/.
 */
import type { CheckpointImage } from './image-model.ts';
import { readTar, untrustedImage } from './image-tar.ts';
import { validateImage } from './validate.ts';

export type { CheckpointImage, MemoryRegion, PlatformFacts, ProcessInfo } from './image-model.ts';
export { memoryEntryName } from './image-model.ts';
export { IMAGE_VERSION, imageEntries, readTar, readTarEntries, writeCheckpointImage } from './image-tar.ts';

/**
 * Reads and validates an image. Throws ImageRejectedError naming the entry
 * and field of the first problem; on success every field is within range.
 */
export async function readCheckpointImage(file: string): Promise<CheckpointImage> {
  const { entries, digests } = await readTar(file);
  return parseImageEntries(entries, { digests });
}

/**
 * Validates an image already split into its tar entries (the tests build
 * hostile ones this way). `tree`: the caller reads the tree entries itself
 * (tree-image.ts); without it an image holding more than one process is
 * refused. `digests`: each entry's SHA-256 as readTar took it from these
 * very buffers (without them every entry is hashed here).
 */
export function parseImageEntries(entries: Map<string, Buffer>, options: { tree?: boolean; digests?: ReadonlyMap<string, string> } = {}): CheckpointImage {
  return validateImage(untrustedImage(entries, options));
}
