/*
 * mappings: every kind of mapping across a checkpoint.
 *
 *   mappings PREFIX
 *
 * Creates PREFIX.priv (4 pages) and PREFIX.shared (3 pages), each page
 * filled with its own byte, and maps, at fixed addresses:
 *   - 2 pages of shared anonymous memory (MAP_SHARED | MAP_ANONYMOUS),
 *     filled with a pattern;
 *   - 3 pages of PREFIX.priv from offset 4096, MAP_PRIVATE, read-write; it
 *     writes into the first page (copy-on-write: the file keeps its bytes)
 *     and makes the last page read-only (two VMAs, two offsets);
 *   - 2 pages of PREFIX.shared from offset 4096, MAP_SHARED, read-write; it
 *     writes into the first page (which reaches the file).
 * The descriptors are closed. It records the /proc/self/maps lines of the
 * three ranges, calls mappings_checkpoint() — the host checkpoints there —
 * and then checks: every byte of the three mappings; the maps lines (range,
 * perms, offset, name) are the recorded ones; a write through the shared
 * file mapping reaches the file (pread), one through the private mapping
 * does not.
 *
 * Prints "mappings ok ..." and exits 0, or "mappings mismatch: <items>" and
 * exits 1.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096
#define SHARED_ANON ((void *)0x200000000UL)
#define PRIV_FILE ((void *)0x200100000UL)
#define SHARED_FILE ((void *)0x200200000UL)

static char mismatches[1024];
static void mismatch(const char *what)
{
	strncat(mismatches, " ", sizeof mismatches - strlen(mismatches) - 1);
	strncat(mismatches, what, sizeof mismatches - strlen(mismatches) - 1);
}

/* The host's breakpoint goes here. */
__attribute__((noipa, used)) void mappings_checkpoint(void)
{
	__asm__ volatile("nop" ::: "memory");
}

static void die(const char *what)
{
	printf("mappings mismatch: setup %s\n", what);
	exit(1);
}

/* A file of `pages` pages, page i filled with base + i. */
static void make_file(const char *path, int pages, char base)
{
	char page[PAGE];
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		die("open");
	for (int i = 0; i < pages; i++) {
		memset(page, base + i, sizeof page);
		if (write(fd, page, sizeof page) != PAGE)
			die("write");
	}
	close(fd);
}

static void *map_file(const char *path, void *at, size_t pages, int flags)
{
	int fd = open(path, O_RDWR);
	if (fd < 0)
		die("open for mmap");
	void *p = mmap(at, pages * PAGE, PROT_READ | PROT_WRITE, flags | MAP_FIXED_NOREPLACE, fd, PAGE);
	if (p != at)
		die("mmap file");
	close(fd);
	return p;
}

/* The maps lines of [lo, hi): range, perms, offset and name (not the device or inode). */
static void maps_of(uintptr_t lo, uintptr_t hi, char *out, size_t size)
{
	char line[512];
	FILE *f = fopen("/proc/self/maps", "r");
	out[0] = 0;
	if (!f)
		die("maps");
	while (fgets(line, sizeof line, f)) {
		unsigned long start, end, offset;
		char perms[5];
		int name_at = 0;
		if (sscanf(line, "%lx-%lx %4s %lx %*s %*s %n", &start, &end, perms, &offset, &name_at) < 4)
			continue;
		if (start < lo || start >= hi)
			continue;
		/* An anonymous line has no name: %n then stands past its newline. */
		char *name = name_at ? line + name_at : line + strlen(line);
		name[strcspn(name, "\n")] = 0;
		char entry[600];
		snprintf(entry, sizeof entry, "%lx-%lx %s %lx %s\n", start, end, perms, offset, name);
		strncat(out, entry, size - strlen(out) - 1);
	}
	fclose(f);
}

static int all(const unsigned char *p, size_t n, unsigned char v)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != v)
			return 0;
	return 1;
}

static int file_byte(const char *path, off_t at, unsigned char *v)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	ssize_t n = pread(fd, v, 1, at);
	close(fd);
	return n == 1 ? 0 : -1;
}

int main(int argc, char **argv)
{
	static char priv_path[256], shared_path[256];
	static char before[4096], after[4096];
	if (argc != 2)
		die("usage: mappings PREFIX");
	snprintf(priv_path, sizeof priv_path, "%s.priv", argv[1]);
	snprintf(shared_path, sizeof shared_path, "%s.shared", argv[1]);
	make_file(priv_path, 4, 'a');
	make_file(shared_path, 3, 'A');

	unsigned char *anon = mmap(SHARED_ANON, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if ((void *)anon != SHARED_ANON)
		die("mmap shared anonymous");
	for (int i = 0; i < 2 * PAGE; i++)
		anon[i] = (unsigned char)(i * 7 + 3);
	unsigned char *priv = map_file(priv_path, PRIV_FILE, 3, MAP_PRIVATE);
	memset(priv, 'P', PAGE);
	if (mprotect(priv + 2 * PAGE, PAGE, PROT_READ) != 0)
		die("mprotect");
	unsigned char *shared = map_file(shared_path, SHARED_FILE, 2, MAP_SHARED);
	memset(shared, 'S', PAGE);

	maps_of((uintptr_t)SHARED_ANON, (uintptr_t)SHARED_FILE + 2 * PAGE, before, sizeof before);
	mappings_checkpoint();
	maps_of((uintptr_t)SHARED_ANON, (uintptr_t)SHARED_FILE + 2 * PAGE, after, sizeof after);

	int anon_ok = 1;
	for (int i = 0; i < 2 * PAGE; i++)
		if (anon[i] != (unsigned char)(i * 7 + 3))
			anon_ok = 0;
	if (!anon_ok)
		mismatch("shared-anon-contents");
	/* File pages 1..3 are 'b'..'d'; the first was overwritten with 'P' before the checkpoint. */
	if (!all(priv, PAGE, 'P') || !all(priv + PAGE, PAGE, 'c') || !all(priv + 2 * PAGE, PAGE, 'd'))
		mismatch("private-file-contents");
	/* File pages 1..2 are 'B', 'C'; the first was overwritten with 'S' through the mapping. */
	if (!all(shared, PAGE, 'S') || !all(shared + PAGE, PAGE, 'C'))
		mismatch("shared-file-contents");
	if (strcmp(before, after) != 0 || before[0] == 0) {
		mismatch("maps");
		printf("maps before:\n%smaps after:\n%s", before, after);
	}

	unsigned char v = 0;
	shared[PAGE + 5] = 'W';
	if (file_byte(shared_path, 2 * PAGE + 5, &v) != 0 || v != 'W')
		mismatch("shared-write-not-in-file");
	priv[PAGE + 5] = 'W';
	if (file_byte(priv_path, 2 * PAGE + 5, &v) != 0 || v != 'c')
		mismatch("private-write-in-file");

	if (mismatches[0]) {
		printf("mappings mismatch:%s\n", mismatches);
		return 1;
	}
	printf("mappings ok shared-anon private-file shared-file maps shared-write private-write\n");
	return 0;
}
