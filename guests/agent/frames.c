/*
 * PAGE_FRAMES: the guest-physical page frame of every page of a stopped
 * tracee's ranges, so the host can read or write those pages straight in
 * guest RAM (a shared memory-backend file; harness/agent/guest-ram.ts)
 * instead of moving them through this agent at all.
 *
 * Modes: CHECK reads /proc/PID/pagemap only; READ first faults in the pages
 * that are not present (a one-byte read each: the page a read of the process
 * would see, the file's page or the zero page); WRITE first makes every page
 * a present, private, exclusively mapped anonymous page (a zero byte
 * written to each — the host overwrites the whole page after — which is a
 * copy on write where the page was the file's or shared). A frame is reported only where the mode can use it —
 * READ: any present page; WRITE: a present anonymous page mapped by this
 * process alone, so bytes written to the frame change this process's page
 * and nothing else (never a page cache page, never the shared zero page) —
 * and 0 elsewhere; the host moves those pages the ordinary way.
 *
 * The tracee is stopped, but the kernel may still move a page (compaction,
 * khugepaged): the host asks again in CHECK mode after its copy and redoes
 * every page whose frame changed (client.ts).
 */
#include "agent.h"

#define PAGE_BYTES 4096u
#define PM_PRESENT (1ull << 63)
#define PM_FILE (1ull << 61)
#define PM_EXCLUSIVE (1ull << 56)
#define PM_PFN ((1ull << 55) - 1)
#define FRAMES_CHECK 0u
#define FRAMES_READ 1u
#define FRAMES_WRITE 2u
/* process_vm_readv/writev take at most IOV_MAX (1024) remote vectors */
#define IOV_BATCH 1024u
/* 16 GiB of pages in one request: far beyond any guest this runs in */
#define FRAMES_MAX_PAGES (1u << 22)

static int read_entries(int fd, uint64_t first_page, uint64_t count, uint64_t *out)
{
	size_t done = 0, want = (size_t)count * 8;

	while (done < want) {
		ssize_t r = pread(fd, (uint8_t *)out + done, want - done, (off_t)(first_page * 8 + done));

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			if (r == 0)
				errno = EIO;
			return -1;
		}
		done += (size_t)r;
	}
	return 0;
}

static bool usable(uint64_t e, uint32_t mode)
{
	if (!(e & PM_PRESENT) || !(e & PM_PFN) || (e & PM_PFN) > UINT32_MAX)
		return false;
	if (mode == FRAMES_WRITE)
		return (e & PM_EXCLUSIVE) && !(e & PM_FILE);
	return true;
}

/* One page through /proc/PID/mem (which may write a read-only private
 * mapping: FOLL_FORCE), for a page process_vm_* could not take. */
static void touch_one(int memfd, uint64_t addr, bool write)
{
	uint8_t b;

	if (memfd < 0 || pread(memfd, &b, 1, (off_t)addr) != 1)
		return;
	if (write)
		(void)!pwrite(memfd, &b, 1, (off_t)addr);
}

/* Faults in the pages at `addrs`; a page that fails (a PROT_NONE mapping, a
 * hole) is simply left, its frame then reported as 0.
 * READ: one byte read from each page.
 * WRITE: a zero byte written to each: the host overwrites every page it asked
 * frames for in this mode, whole, so what the page held does not matter —
 * and a write alone is one fault that allocates the page, where reading the
 * byte first faulted the shared zero page in and then copied it on write
 * (64 MiB under TCG: 199-285 ms, where the read first took 249-347). */
static void populate(pid_t pid, const uint64_t *addrs, size_t n, bool write, int memfd)
{
	struct iovec remote[IOV_BATCH], local;
	uint8_t bytes[IOV_BATCH];

	if (write)
		memset(bytes, 0, sizeof bytes);
	for (size_t at = 0; at < n;) {
		size_t k = n - at < IOV_BATCH ? n - at : IOV_BATCH;
		ssize_t got;

		for (size_t i = 0; i < k; i++) {
			remote[i].iov_base = (void *)(uintptr_t)addrs[at + i];
			remote[i].iov_len = 1;
		}
		local.iov_base = bytes;
		local.iov_len = k;
		if (write)
			got = process_vm_writev(pid, &local, 1, remote, (unsigned long)k, 0);
		else
			got = process_vm_readv(pid, &local, 1, remote, (unsigned long)k, 0);
		if (got < 0)
			got = 0;
		if (write) {
			/* the rest go one by one through /proc/PID/mem (a read-only mapping refuses the first) */
			for (size_t i = (size_t)got; i < k; i++)
				touch_one(memfd, addrs[at + i], true);
			at += k;
		} else if ((size_t)got < k) {
			touch_one(memfd, addrs[at + (size_t)got], false);
			at += (size_t)got + 1;
		} else {
			at += k;
		}
	}
}

int op_page_frames(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	uint32_t mode = rd_u32(&c->in, "mode");
	uint32_t n = rd_count(&c->in, "ranges", 16);
	uint64_t *addr = NULL, *len = NULL, *entries = NULL, *todo = NULL, *todo_at = NULL, total = 0, ignored;
	uint32_t *frames = NULL;
	char path[64], name[48];
	int fd = -1, memfd = -1, rc = -1;

	if (!c->in.err[0] && n) {
		addr = calloc(n, sizeof *addr);
		len = calloc(n, sizeof *len);
		if (!addr || !len)
			snprintf(c->in.err, sizeof c->in.err, "ranges: cannot allocate %u entries", n);
	}
	for (uint32_t i = 0; addr && len && i < n && !c->in.err[0]; i++) {
		snprintf(name, sizeof name, "ranges[%u].address", i);
		addr[i] = rd_u64(&c->in, name);
		snprintf(name, sizeof name, "ranges[%u].length", i);
		len[i] = rd_u64(&c->in, name);
		if (c->in.err[0])
			break;
		if (addr[i] % PAGE_BYTES || len[i] % PAGE_BYTES || range_wraps(addr[i], len[i]) ||
		    len[i] / PAGE_BYTES > FRAMES_MAX_PAGES - total)
			snprintf(c->in.err, sizeof c->in.err,
				 "ranges[%u]: 0x%llx + %llu is not page-aligned, wraps, or exceeds %u pages in all", i,
				 (unsigned long long)addr[i], (unsigned long long)len[i], FRAMES_MAX_PAGES);
		total += len[i] / PAGE_BYTES;
	}
	if (parsed(c))
		goto out;
	if (mode > FRAMES_WRITE) {
		fail(c, EINVAL, "mode: %u is not 0 (check), 1 (read) or 2 (write)", mode);
		goto out;
	}
	/* Only a stopped tracee of ours, as READ_MEM and PAGEMAP. */
	if (peek_user(pid, 0, &ignored) < 0) {
		fail_errno(c, "PAGE_FRAMES %d", (int)pid);
		goto out;
	}
	entries = malloc((size_t)total * 8 + 8);
	todo = malloc((size_t)total * 8 + 8);
	todo_at = malloc((size_t)total * 8 + 8);
	frames = malloc((size_t)total * 4 + 4);
	if (!entries || !todo || !todo_at || !frames) {
		fail(c, ENOMEM, "ranges: cannot allocate for %llu pages", (unsigned long long)total);
		goto out;
	}
	snprintf(path, sizeof path, "/proc/%d/pagemap", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		fail_errno(c, "%s", path);
		goto out;
	}
	uint64_t at = 0;
	size_t missing = 0;

	for (uint32_t i = 0; i < n; at += len[i] / PAGE_BYTES, i++) {
		if (read_entries(fd, addr[i] / PAGE_BYTES, len[i] / PAGE_BYTES, entries + at) < 0) {
			fail_errno(c, "%s at page 0x%llx", path, (unsigned long long)(addr[i] / PAGE_BYTES));
			goto out;
		}
		for (uint64_t p = 0; mode != FRAMES_CHECK && p < len[i] / PAGE_BYTES; p++)
			if (!usable(entries[at + p], mode)) {
				todo[missing] = addr[i] + p * PAGE_BYTES;
				todo_at[missing++] = at + p;
			}
	}
	if (missing > 0) {
		memfd = open_mem(pid, O_RDWR);
		populate(pid, todo, missing, mode == FRAMES_WRITE, memfd);
		/* Only the pages just faulted in are read again, a run of them per
		 * pread: a READ of a 64 MiB region with 2 pages missing walked all
		 * 16,384 entries twice. */
		for (size_t k = 0; k < missing;) {
			size_t run = 1;

			while (k + run < missing && todo_at[k + run] == todo_at[k] + run && todo[k + run] == todo[k] + run * PAGE_BYTES)
				run++;
			if (read_entries(fd, todo[k] / PAGE_BYTES, run, entries + todo_at[k]) < 0) {
				fail_errno(c, "%s at page 0x%llx", path, (unsigned long long)(todo[k] / PAGE_BYTES));
				goto out;
			}
			k += run;
		}
	}
	for (uint64_t p = 0; p < total; p++)
		frames[p] = usable(entries[p], mode) ? (uint32_t)(entries[p] & PM_PFN) : 0;
	wr_bytes(&c->out, frames, (size_t)total * 4);
	if (c->out.oom) {
		fail(c, ENOMEM, "frames: cannot allocate %llu bytes", (unsigned long long)total * 4);
		goto out;
	}
	rc = 0;
out:
	if (fd >= 0)
		close(fd);
	if (memfd >= 0)
		close(memfd);
	free(addr);
	free(len);
	free(entries);
	free(todo);
	free(todo_at);
	free(frames);
	return rc;
}
