/*
 * Memory and files: the ptrace word helpers, /proc/PID/mem, and the READ_FILE,
 * READ_MEM, WRITE_MEM, READLINK and LISTDIR ops.
 */
#include "agent.h"

/* ------------------------------------------------------------------------ */
/* ptrace helpers. */

int peek_user(pid_t pid, uint64_t off, uint64_t *val)
{
	long v;

	errno = 0;
	v = ptrace(PTRACE_PEEKUSER, pid, (void *)off, 0);
	if (v == -1 && errno)
		return -1;
	*val = (uint64_t)v;
	return 0;
}

int peek_data(pid_t pid, uint64_t addr, uint64_t *val)
{
	long v;

	errno = 0;
	v = ptrace(PTRACE_PEEKDATA, pid, (void *)addr, 0);
	if (v == -1 && errno)
		return -1;
	*val = (uint64_t)v;
	return 0;
}

int poke_data(pid_t pid, uint64_t addr, uint64_t val)
{
	return ptrace(PTRACE_POKEDATA, pid, (void *)addr, (void *)val) < 0 ? -1 : 0;
}

/*
 * The word-sized window that contains [addr, addr+n), n <= 8: the word at
 * addr, or, when that runs off the end of a mapping, the word ending at
 * addr+n. PEEKDATA/POKEDATA move whole words, and a patch near the end of
 * the last mapped page must not touch the next, unmapped one.
 */
int word_window(pid_t pid, uint64_t addr, size_t n, uint64_t *base, uint64_t *word)
{
	if (peek_data(pid, addr, word) == 0) {
		*base = addr;
		return 0;
	}
	if (n >= 8 || addr + n < 8)
		return -1;
	*base = addr + n - 8;
	return peek_data(pid, *base, word);
}

/* Memory writes through POKEDATA, which is allowed to write read-only private
 * mappings even where /proc/PID/mem is not (proc_mem.force_override). */
int poke_bytes(pid_t pid, uint64_t addr, const uint8_t *src, size_t n)
{
	uint64_t word, base;

	for (; n >= 8; addr += 8, src += 8, n -= 8) {
		memcpy(&word, src, 8);
		if (poke_data(pid, addr, word) < 0)
			return -1;
	}
	if (!n)
		return 0;
	if (word_window(pid, addr, n, &base, &word) < 0)
		return -1;
	memcpy((uint8_t *)&word + (addr - base), src, n);
	return poke_data(pid, base, word);
}

/*
 * /proc/PID/mem is open to root for any process, running or not. A cheap
 * ptrace request first gives READ_MEM and WRITE_MEM what PEEKDATA/POKEDATA
 * would: ESRCH unless pid is our tracee and in a ptrace stop, so a wrong pid
 * cannot scribble over some other guest process.
 */
int open_mem(pid_t pid, int flags)
{
	char path[64];
	uint64_t ignored;

	if (peek_user(pid, 0, &ignored) < 0)
		return -1;
	snprintf(path, sizeof path, "/proc/%d/mem", (int)pid);
	return open(path, flags | O_CLOEXEC);
}

bool range_wraps(uint64_t addr, uint64_t len)
{
	return len && addr + len - 1 < addr;
}

/* Writes n bytes at addr of pid through its /proc/PID/mem (fd) as far as
 * that goes, and the rest with POKEDATA: /proc/PID/mem refuses read-only
 * mappings when the kernel restricts FOLL_FORCE there; POKEDATA does not.
 * *written = what /proc/PID/mem took. Returns 0, or -1 with errno. */
int write_through_mem(int fd, pid_t pid, uint64_t addr, const uint8_t *data, size_t n, size_t *written)
{
	size_t done = 0;

	while (done < n) {
		ssize_t r = pwrite(fd, data + done, n - done, (off_t)(addr + done));

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		done += (size_t)r;
	}
	*written = done;
	if (done < n && poke_bytes(pid, addr + done, data + done, n - done) < 0)
		return -1;
	return 0;
}

int op_read_file(struct call *c)
{
	char *path = rd_cstr(&c->in, "path");
	uint64_t max = rd_u64(&c->in, "max_size");
	size_t at, have = 0;
	int fd, rc = -1;

	if (parsed(c))
		goto out;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		fail_errno(c, "open %s", path);
		goto out;
	}
	/* Read to EOF rather than trusting st_size, which is 0 for /proc files;
	 * one byte beyond MAX_DATA tells a too-large file from one that fits. */
	if (max > (uint64_t)MAX_DATA + 1)
		max = (uint64_t)MAX_DATA + 1;
	at = wr_mark(&c->out);
	while (have < max) {
		uint64_t want = max - have < 65536 ? max - have : 65536;
		uint8_t *p;
		ssize_t n;

		p = wr_grow(&c->out, want);
		if (!p) {
			fail(c, ENOMEM, "%s: out of memory after %zu bytes", path, have);
			break;
		}
		n = read(fd, p, want);
		c->out.len -= want;
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			fail_errno(c, "read %s", path);
			break;
		}
		if (n == 0)
			break;
		c->out.len += (size_t)n;
		have += (size_t)n;
	}
	close(fd);
	if (!c->err && have > MAX_DATA)
		fail(c, EFBIG, "%s: more than %u bytes do not fit in a frame", path, MAX_DATA);
	if (c->err)
		goto out;
	wr_patch_u32(&c->out, at, (uint32_t)have);
	rc = 0;
out:
	free(path);
	return rc;
}

int op_read_mem(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	uint64_t addr = rd_u64(&c->in, "address");
	uint64_t len = rd_u64(&c->in, "length");
	uint8_t *p;
	size_t done = 0;
	int fd;

	if (parsed(c))
		return -1;
	if (len > MAX_DATA)
		return fail(c, EINVAL, "length: %llu exceeds the frame limit", (unsigned long long)len);
	if (range_wraps(addr, len))
		return fail(c, EINVAL, "length: 0x%llx + %llu wraps around", (unsigned long long)addr,
			    (unsigned long long)len);
	wr_u32(&c->out, (uint32_t)len);
	p = wr_grow(&c->out, len);
	if (c->out.oom)
		return fail(c, ENOMEM, "length: cannot allocate %llu bytes", (unsigned long long)len);
	fd = open_mem(pid, O_RDONLY);
	if (fd < 0)
		return fail_errno(c, "READ_MEM %d", (int)pid);
	while (done < len) {
		ssize_t n = pread(fd, p + done, len - done, (off_t)(addr + done));

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (n == 0)
				errno = EIO;
			fail_errno(c, "read 0x%llx: only %zu of %llu bytes readable", (unsigned long long)addr,
				   done, (unsigned long long)len);
			break;
		}
		done += (size_t)n;
	}
	close(fd);
	return c->err ? -1 : 0;
}

int op_write_mem(struct call *c)
{
	pid_t pid = rd_pid(&c->in);
	uint64_t addr = rd_u64(&c->in, "address");
	uint32_t len;
	const uint8_t *data = rd_bytes(&c->in, "data", &len);
	size_t done = 0;
	int fd, rc, e;

	if (parsed(c))
		return -1;
	if (range_wraps(addr, len))
		return fail(c, EINVAL, "data: 0x%llx + %u wraps around", (unsigned long long)addr, len);
	fd = open_mem(pid, O_WRONLY);
	if (fd < 0)
		return fail_errno(c, "WRITE_MEM %d", (int)pid);
	rc = write_through_mem(fd, pid, addr, data, len, &done);
	e = errno;
	close(fd);
	errno = e;
	if (rc < 0)
		return fail_errno(c, "write 0x%llx (%u bytes): failed after %zu bytes", (unsigned long long)addr,
				  len, done);
	return 0;
}

/* A symbolic link's target: how /proc/PID/fd/N names an open file. */
int op_readlink(struct call *c)
{
	char *path = rd_cstr(&c->in, "path");
	char target[PATH_MAX + 1];
	ssize_t n;
	int rc = -1;

	if (parsed(c))
		goto out;
	n = readlink(path, target, sizeof target);
	if (n < 0) {
		fail_errno(c, "readlink %s", path);
		goto out;
	}
	if ((size_t)n >= sizeof target) {
		fail(c, ENAMETOOLONG, "readlink %s: target longer than %d bytes", path, PATH_MAX);
		goto out;
	}
	wr_bytes(&c->out, target, (size_t)n);
	rc = 0;
out:
	free(path);
	return rc;
}

/* The names in a directory (without . and ..), in the order readdir gives. */
int op_listdir(struct call *c)
{
	char *path = rd_cstr(&c->in, "path");
	struct dirent *e;
	uint32_t count = 0;
	size_t at;
	DIR *d = NULL;
	int rc = -1;

	if (parsed(c))
		goto out;
	d = opendir(path);
	if (!d) {
		fail_errno(c, "opendir %s", path);
		goto out;
	}
	at = wr_mark(&c->out);
	errno = 0;
	while ((e = readdir(d)) != NULL) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (++count > 65536) {
			fail(c, E2BIG, "%s: more than 65536 entries", path);
			goto out;
		}
		wr_str(&c->out, e->d_name);
	}
	if (errno) {
		fail_errno(c, "readdir %s", path);
		goto out;
	}
	if (c->out.oom) {
		fail(c, ENOMEM, "%s: out of memory", path);
		goto out;
	}
	wr_patch_u32(&c->out, at, count);
	rc = 0;
out:
	if (d)
		closedir(d);
	free(path);
	return rc;
}
