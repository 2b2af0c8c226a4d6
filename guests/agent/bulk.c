/*
 * The bulk data port: BULK_OPEN, READ_MEM_BULK, WRITE_MEM_BULK, and PAGEMAP,
 * which says which pages a bulk read needs.
 */
#include "agent.h"

/* ------------------------------------------------------------------------ */
/* The bulk data port (docs/agent-protocol.md, "Bulk data"): a virtio-serial
 * port on which page data crosses as frames of a 16-byte header (magic,
 * tag, length) and the bytes, while the request and its answer stay on
 * stdin/stdout. Each READ_MEM_BULK the agent parses writes exactly one
 * frame, each WRITE_MEM_BULK it sees — executed, failed or skipped in a
 * BATCH — consumes exactly one: the two ends never lose step. */

#define BULK_MAGIC 0x4b4c5542u /* "BULK" */
#define BULK_HEADER 16u
#define BULK_CHUNK (1u << 20)
#define PAGE_BYTES 4096u

static int bulk_fd = -1;
static uint8_t *bulk_buf;

struct bulk_range {
	uint64_t addr, len;
};

/* Reads pid, tag and the ranges of a *_MEM_BULK request; *total is their sum. */
static struct bulk_range *rd_bulk_ranges(struct call *c, pid_t *pid, uint32_t *tag, uint32_t *n, uint64_t *total)
{
	struct bulk_range *ranges = NULL;
	char name[48];

	*pid = rd_pid(&c->in);
	*tag = rd_u32(&c->in, "tag");
	*n = rd_count(&c->in, "ranges", 16);
	*total = 0;
	if (!c->in.err[0] && *n) {
		ranges = calloc(*n, sizeof *ranges);
		if (!ranges)
			snprintf(c->in.err, sizeof c->in.err, "ranges: cannot allocate %u entries", *n);
	}
	for (uint32_t i = 0; ranges && i < *n && !c->in.err[0]; i++) {
		snprintf(name, sizeof name, "ranges[%u].address", i);
		ranges[i].addr = rd_u64(&c->in, name);
		snprintf(name, sizeof name, "ranges[%u].length", i);
		ranges[i].len = rd_u64(&c->in, name);
		if (c->in.err[0])
			break;
		if (range_wraps(ranges[i].addr, ranges[i].len) || ranges[i].len > (1ull << 40) || *total + ranges[i].len < *total)
			snprintf(c->in.err, sizeof c->in.err, "ranges[%u]: 0x%llx + %llu wraps or is too long", i,
				 (unsigned long long)ranges[i].addr, (unsigned long long)ranges[i].len);
		*total += ranges[i].len;
	}
	return ranges;
}

static void put_bulk_header(uint8_t *h, uint32_t tag, uint64_t len)
{
	put_le(h, BULK_MAGIC, 4);
	put_le(h + 4, tag, 4);
	put_le(h + 8, len, 8);
}

/* Reads one frame header; returns its length, or -1 with errno (EPROTO: not a frame). */
static int64_t get_bulk_header(uint32_t *tag)
{
	uint8_t h[BULK_HEADER];
	uint64_t len = 0;
	ssize_t n = read_full(bulk_fd, h, sizeof h);

	if (n != (ssize_t)sizeof h) {
		if (n >= 0)
			errno = EPIPE;
		return -1;
	}
	for (unsigned i = 0; i < 8; i++)
		len |= (uint64_t)h[8 + i] << (8 * i);
	*tag = (uint32_t)h[4] | (uint32_t)h[5] << 8 | (uint32_t)h[6] << 16 | (uint32_t)h[7] << 24;
	if (((uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 24) != BULK_MAGIC ||
	    len > (1ull << 40)) {
		errno = EPROTO;
		return -1;
	}
	return (int64_t)len;
}

/* A port that lost step is closed: every later bulk request fails ENOTCONN. */
static void bulk_lost(void)
{
	if (bulk_fd >= 0)
		close(bulk_fd);
	bulk_fd = -1;
}

/* Reads and drops `len` bytes of the port; -1 with errno when it ends. */
static int bulk_drain(uint64_t len)
{
	while (len) {
		size_t k = len < BULK_CHUNK ? (size_t)len : BULK_CHUNK;

		if (read_full(bulk_fd, bulk_buf, k) != (ssize_t)k) {
			errno = EPIPE;
			return -1;
		}
		len -= k;
	}
	return 0;
}

/* What a BATCH does for a WRITE_MEM_BULK it does not execute: consume its frame. */
void bulk_skip_frame(void)
{
	uint32_t tag;
	int64_t len;

	if (bulk_fd < 0)
		return;
	len = get_bulk_header(&tag);
	if (len < 0 || bulk_drain((uint64_t)len) < 0)
		bulk_lost();
}

int op_bulk_open(struct call *c)
{
	char *name = rd_cstr(&c->in, "name");
	int fd;

	if (parsed(c)) {
		free(name);
		return -1;
	}
	if (bulk_fd >= 0) {
		free(name);
		return 0;
	}
	if (!bulk_buf && !(bulk_buf = malloc(BULK_CHUNK))) {
		free(name);
		return fail(c, ENOMEM, "bulk buffer");
	}
	fd = open_virtio_port(name);
	if (fd < 0) {
		fail_errno(c, "virtio port %s", name);
		free(name);
		return -1;
	}
	free(name);
	bulk_fd = fd;
	return 0;
}

int op_read_mem_bulk(struct call *c)
{
	uint8_t h[BULK_HEADER];
	uint32_t tag, n;
	uint64_t total;
	pid_t pid;
	struct bulk_range *ranges = rd_bulk_ranges(c, &pid, &tag, &n, &total);
	int fd = -1;

	if (bulk_fd < 0) {
		free(ranges);
		return fail(c, ENOTCONN, "no bulk port open (BULK_OPEN)");
	}
	if (parsed(c))
		total = 0;
	/* The frame is written whatever happens next: the host reads one per request. */
	put_bulk_header(h, tag, total);
	if (write_full(bulk_fd, h, sizeof h) < 0) {
		bulk_lost();
		free(ranges);
		return fail_errno(c, "bulk port");
	}
	if (!c->err && (fd = open_mem(pid, O_RDONLY)) < 0)
		fail_errno(c, "READ_MEM_BULK %d", (int)pid);
	for (uint32_t i = 0; i < n && total; i++) {
		for (uint64_t done = 0; done < ranges[i].len;) {
			size_t k = ranges[i].len - done < BULK_CHUNK ? (size_t)(ranges[i].len - done) : BULK_CHUNK;
			size_t got = 0;

			while (fd >= 0 && !c->err && got < k) {
				ssize_t r = pread(fd, bulk_buf + got, k - got, (off_t)(ranges[i].addr + done + got));

				if (r < 0 && errno == EINTR)
					continue;
				if (r <= 0) {
					if (r == 0)
						errno = EIO;
					fail_errno(c, "read 0x%llx: only %zu of %llu bytes readable",
						   (unsigned long long)ranges[i].addr, (size_t)(done + got),
						   (unsigned long long)ranges[i].len);
					break;
				}
				got += (size_t)r;
			}
			/* What could not be read goes as zeros; the request fails. */
			memset(bulk_buf + got, 0, k - got);
			if (write_full(bulk_fd, bulk_buf, k) < 0) {
				bulk_lost();
				if (fd >= 0)
					close(fd);
				free(ranges);
				c->err = 0;
				return fail_errno(c, "bulk port");
			}
			done += k;
		}
	}
	if (fd >= 0)
		close(fd);
	free(ranges);
	if (c->err)
		return -1;
	wr_u64(&c->out, total);
	return 0;
}

int op_write_mem_bulk(struct call *c)
{
	uint32_t tag, n, frame_tag;
	uint64_t total;
	pid_t pid;
	struct bulk_range *ranges = rd_bulk_ranges(c, &pid, &tag, &n, &total);
	int64_t len;
	int fd = -1;

	if (bulk_fd < 0) {
		free(ranges);
		return fail(c, ENOTCONN, "no bulk port open (BULK_OPEN)");
	}
	len = get_bulk_header(&frame_tag);
	if (len < 0) {
		bulk_lost();
		free(ranges);
		return fail_errno(c, "bulk port: no frame header");
	}
	if (parsed(c) || frame_tag != tag || (uint64_t)len != total) {
		if (!c->err)
			fail(c, EPROTO, "bulk frame tag %u with %lld bytes, request tag %u with %llu", frame_tag,
			     (long long)len, tag, (unsigned long long)total);
		if (frame_tag != tag)
			bulk_lost();
		else if (bulk_drain((uint64_t)len) < 0)
			bulk_lost();
		free(ranges);
		return -1;
	}
	if ((fd = open_mem(pid, O_WRONLY)) < 0)
		fail_errno(c, "WRITE_MEM_BULK %d", (int)pid);
	for (uint32_t i = 0; i < n; i++) {
		for (uint64_t done = 0; done < ranges[i].len;) {
			size_t k = ranges[i].len - done < BULK_CHUNK ? (size_t)(ranges[i].len - done) : BULK_CHUNK;
			uint64_t at = ranges[i].addr + done;
			size_t put = 0;

			if (read_full(bulk_fd, bulk_buf, k) != (ssize_t)k) {
				bulk_lost();
				if (fd >= 0)
					close(fd);
				free(ranges);
				c->err = 0;
				errno = EPIPE;
				return fail_errno(c, "bulk port ended inside a frame");
			}
			if (fd >= 0 && !c->err && write_through_mem(fd, pid, at, bulk_buf, k, &put) < 0)
				fail_errno(c, "write 0x%llx (%zu bytes): failed after %zu bytes", (unsigned long long)at, k,
					   put);
			done += k;
		}
	}
	if (fd >= 0)
		close(fd);
	free(ranges);
	return c->err ? -1 : 0;
}

/* One byte per page of [start, start + pages * 4096): bit 0 present, bit 1
 * swapped, bit 2 a file page or shared anonymous memory, from
 * /proc/PID/pagemap (bits 63, 62 and 61). A page with neither of the first two was
 * never touched, or its contents were dropped: it reads as the mapping's
 * backing (zeros, or the file). */
int op_pagemap(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	uint64_t start = rd_u64(&c->in, "start");
	uint32_t pages = rd_u32(&c->in, "pages");
	uint64_t *entries;
	uint8_t *out;
	char path[64];
	size_t done = 0;
	uint64_t ignored;
	int fd;

	if (parsed(c))
		return -1;
	if (start % PAGE_BYTES || pages > MAX_DATA / 8 || range_wraps(start, (uint64_t)pages * PAGE_BYTES))
		return fail(c, EINVAL, "start/pages: 0x%llx + %u pages is not a page-aligned range within the frame limit",
			    (unsigned long long)start, pages);
	/* Only a stopped tracee of ours, as READ_MEM. */
	if (peek_user(pid, 0, &ignored) < 0)
		return fail_errno(c, "PAGEMAP %d", (int)pid);
	entries = malloc((size_t)pages * 8 + 1);
	if (!entries)
		return fail(c, ENOMEM, "pages: cannot allocate %u entries", pages);
	snprintf(path, sizeof path, "/proc/%d/pagemap", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		free(entries);
		return fail_errno(c, "%s", path);
	}
	while (done < (size_t)pages * 8) {
		ssize_t r = pread(fd, (uint8_t *)entries + done, (size_t)pages * 8 - done, (off_t)(start / PAGE_BYTES * 8 + done));

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			if (r == 0)
				errno = EIO;
			close(fd);
			free(entries);
			return fail_errno(c, "%s at page 0x%llx", path, (unsigned long long)(start / PAGE_BYTES));
		}
		done += (size_t)r;
	}
	close(fd);
	wr_u32(&c->out, pages);
	out = wr_grow(&c->out, pages);
	if (c->out.oom) {
		free(entries);
		return fail(c, ENOMEM, "pages: cannot allocate %u bytes", pages);
	}
	for (uint32_t i = 0; i < pages; i++)
		out[i] = (uint8_t)((entries[i] >> 63 & 1) | (entries[i] >> 62 & 1) << 1 | (entries[i] >> 61 & 1) << 2);
	free(entries);
	return 0;
}
