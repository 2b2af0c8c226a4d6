/**
 * Where QEMU's `pc` machine puts guest RAM: from guest-physical address 0 up
 * to the below-4G size, which is all of RAM up to 3 GiB (QEMU splits larger
 * RAM at 3 GiB or 3.5 GiB and maps the rest above 4 GiB). Within this bound
 * a page's frame × 4096 is its offset in the RAM backend.
 */
export const PC_LINEAR_RAM_MAX_MIB = 3072;
