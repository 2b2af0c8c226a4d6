/*
 * sharefd: the sockpair binary's other modes (sockpair.c hands them here):
 * a parent and a child that share what fork shares, for the refusals and
 * restores of a process tree's shared state.
 *
 *   sockpair offset|append|fifo|memfd|memfd-fd PATH
 *
 * MODE says what the parent opens (at PATH, in a directory of the caller's)
 * before it forks:
 *   offset   PATH read-write: one open file description, one offset
 *   append   PATH write-only, O_APPEND: one description, writes at the end
 *   fifo     a FIFO made at PATH, opened read-write, 5 bytes queued in it
 *   memfd    a memfd named PATH's last component, 4 KiB, mapped shared
 *   memfd-fd a memfd named so, held as fd 3 only: MEMFD_TEXT written,
 *            6000 bytes long, sealed against shrinking, offset 7
 *   memfd-reopen  a memfd named so as fd 3, which the child opens again
 *            through /proc/self/fd/3 as fd 4: two descriptions of it
 * Then the parent forks; each process writes a line to stdout and sleeps
 * in pause() until killed. The host stops the two and checkpoints them.
 *
 *   sockpair memfd-run NAME
 *
 * runs to an end instead: the parent makes a memfd NAME (MEMFD_TEXT
 * written, MEMFD_SIZE bytes, sealed against shrinking, offset at the end of
 * the text) and a pipe, and forks; the child waits for a byte on the pipe.
 * The parent calls sharefd_checkpoint() — where the host stops it — then
 * lets the child go; the child writes CHILD_TEXT at CHILD_AT through its
 * descriptor and exits; the parent, once it has waited for the child, reads
 * there through its own and checks the seals, offset and size:
 *
 *   sharefd memfd-run ok: the child's write seen, seals 0x2, offset 22, size 6000
 *
 * or "sharefd memfd-run mismatch: ..." naming what differed (a child with a
 * memfd of its own writes where the parent never looks).
 *
 *   sockpair offset-run PATH
 *
 * runs to an end too, through one open file description: the parent opens
 * PATH read-write (created, truncated), writes OFFSET_TEXT, seeks back to
 * OFFSET_START, makes a pipe and forks; the child waits for a byte on the
 * pipe. The parent calls sharefd_checkpoint() — where the host stops it —
 * then lets the child go; the child reads 3 bytes through its descriptor
 * and writes CHILD_WORD after them; the parent, once it has waited for the
 * child, writes PARENT_WORD through its own, at the offset the child's read
 * and write moved, and reads the whole file:
 *
 *   sharefd offset-run ok: the child read 234, one offset, 16 after both writes: 01234childparent
 *
 * or "sharefd offset-run mismatch: ..." with what it found (a parent with a
 * description of its own writes over the child's bytes, at its own offset).
 *
 *   sockpair memfd-map-run NAME
 *
 * a memfd mapped MAP_SHARED by parent and child: the parent makes a memfd
 * NAME (2 pages), maps it shared, writes MAP_TEXT at the start, makes a pipe
 * and forks; the child closes its descriptor of the memfd (it holds the
 * mapping only) and waits for a byte on the pipe. The parent calls
 * sharefd_checkpoint() — where the host stops it — then lets the child go;
 * the child writes CHILD_TEXT at CHILD_AT through the mapping and exits;
 * the parent, once it has waited for the child, reads there through its
 * mapping and through its descriptor:
 *
 *   sharefd memfd-map-run ok: the child's write seen through the mapping and the descriptor
 *
 * or "sharefd memfd-map-run mismatch: ..." (a child with a private copy of
 * the mapping writes where the parent never looks).
 *
 *   sockpair fifo-run PATH
 *
 * a FIFO between parent and child: the parent makes a FIFO at PATH (removing
 * what was there), opens its read end (non-blocking for the open only) and
 * its write end, writes FIFO_QUEUED into it, makes a pipe and forks; the
 * child waits for a byte on the pipe. The parent calls sharefd_checkpoint()
 * — where the host stops it, FIFO_QUEUED queued — then lets the child go;
 * the child writes FIFO_CHILD into the FIFO and exits; the parent, once it
 * has waited for the child, reads what the FIFO holds:
 *
 *   sharefd fifo-run ok: read 33 bytes: queued before the checkpoint + child
 *
 * or "sharefd fifo-run mismatch: ..." with what it read (a FIFO restored
 * without its queued bytes holds only the child's).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

int sharefd_main(int argc, char **argv);

#define MEMFD_TEXT "shared memfd contents\n"
#define MEMFD_SIZE 6000
#define CHILD_TEXT "written by the child"
#define CHILD_AT 100

/* The checkpoint point of memfd-run: the host stops the parent here (a breakpoint), the child waiting on the pipe. */
__attribute__((noinline)) void sharefd_checkpoint(void)
{
	__asm__ volatile("" ::: "memory");
}

static int memfd_run(const char *name)
{
	char got[sizeof(CHILD_TEXT)] = { 0 }, c = 0;
	int fd, go[2], status, seals;
	off_t offset;
	struct stat st;
	pid_t child;

	setvbuf(stdout, NULL, _IONBF, 0);
	fd = memfd_create(name, MFD_ALLOW_SEALING);
	if (fd < 0 || write(fd, MEMFD_TEXT, sizeof(MEMFD_TEXT) - 1) != sizeof(MEMFD_TEXT) - 1 || ftruncate(fd, MEMFD_SIZE) < 0 ||
			fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0 || pipe(go) < 0)
		return 1;
	child = fork();
	if (child < 0)
		return 1;
	if (child == 0) {
		if (read(go[0], &c, 1) != 1)
			_exit(3);
		_exit(pwrite(fd, CHILD_TEXT, sizeof(CHILD_TEXT) - 1, CHILD_AT) == sizeof(CHILD_TEXT) - 1 ? 0 : 4);
	}
	sharefd_checkpoint();
	if (write(go[1], &c, 1) != 1 || waitpid(child, &status, 0) != child)
		return 1;
	seals = fcntl(fd, F_GET_SEALS);
	offset = lseek(fd, 0, SEEK_CUR);
	if (fstat(fd, &st) < 0 || pread(fd, got, sizeof(got) - 1, CHILD_AT) != sizeof(got) - 1)
		return 1;
	if (status != 0 || strcmp(got, CHILD_TEXT) != 0 || seals != F_SEAL_SHRINK || offset != sizeof(MEMFD_TEXT) - 1 || st.st_size != MEMFD_SIZE) {
		printf("sharefd memfd-run mismatch: %s, child status 0x%x, seals 0x%x, offset %ld, size %ld\n",
		       strcmp(got, CHILD_TEXT) == 0 ? "the child's write seen" : "the child's write not seen", status, seals, (long)offset,
		       (long)st.st_size);
		return 0;
	}
	printf("sharefd memfd-run ok: the child's write seen, seals 0x%x, offset %ld, size %ld\n", seals, (long)offset, (long)st.st_size);
	return 0;
}

#define OFFSET_TEXT "0123456789"
#define OFFSET_START 2
#define CHILD_WORD "child"
#define PARENT_WORD "parent"
#define OFFSET_RESULT "01234childparent"

static int offset_run(const char *path)
{
	char got[64] = { 0 }, c = 0;
	int fd, go[2], status;
	off_t offset;
	ssize_t n;
	pid_t child;

	setvbuf(stdout, NULL, _IONBF, 0);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || write(fd, OFFSET_TEXT, sizeof(OFFSET_TEXT) - 1) != sizeof(OFFSET_TEXT) - 1 || lseek(fd, OFFSET_START, SEEK_SET) != OFFSET_START ||
			pipe(go) < 0)
		return 1;
	child = fork();
	if (child < 0)
		return 1;
	if (child == 0) {
		char three[4] = { 0 };

		if (read(go[0], &c, 1) != 1)
			_exit(3);
		if (read(fd, three, 3) != 3 || strcmp(three, "234") != 0)
			_exit(4);
		_exit(write(fd, CHILD_WORD, sizeof(CHILD_WORD) - 1) == sizeof(CHILD_WORD) - 1 ? 0 : 5);
	}
	sharefd_checkpoint();
	if (write(go[1], &c, 1) != 1 || waitpid(child, &status, 0) != child)
		return 1;
	if (write(fd, PARENT_WORD, sizeof(PARENT_WORD) - 1) != sizeof(PARENT_WORD) - 1)
		return 1;
	offset = lseek(fd, 0, SEEK_CUR);
	n = pread(fd, got, sizeof(got) - 1, 0);
	if (n < 0)
		return 1;
	if (status != 0 || offset != sizeof(OFFSET_RESULT) - 1 || strcmp(got, OFFSET_RESULT) != 0) {
		printf("sharefd offset-run mismatch: child status 0x%x, offset %ld after both writes: %s\n", status, (long)offset, got);
		return 0;
	}
	printf("sharefd offset-run ok: the child read 234, one offset, %ld after both writes: %s\n", (long)offset, got);
	return 0;
}

#define MAP_TEXT "mapped shared by both"

static int memfd_map_run(const char *name)
{
	char got[sizeof(CHILD_TEXT)] = { 0 }, c = 0;
	int fd, go[2], status, through_map, through_fd;
	char *p;
	pid_t child;

	setvbuf(stdout, NULL, _IONBF, 0);
	fd = memfd_create(name, 0);
	if (fd < 0 || ftruncate(fd, 8192) < 0)
		return 1;
	p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED || pipe(go) < 0)
		return 1;
	strcpy(p, MAP_TEXT);
	child = fork();
	if (child < 0)
		return 1;
	if (child == 0) {
		close(fd);
		if (read(go[0], &c, 1) != 1)
			_exit(3);
		memcpy(p + CHILD_AT, CHILD_TEXT, sizeof(CHILD_TEXT));
		_exit(strcmp(p, MAP_TEXT) == 0 ? 0 : 4);
	}
	sharefd_checkpoint();
	if (write(go[1], &c, 1) != 1 || waitpid(child, &status, 0) != child)
		return 1;
	through_map = strcmp(p + CHILD_AT, CHILD_TEXT) == 0;
	through_fd = pread(fd, got, sizeof(got) - 1, CHILD_AT) == sizeof(got) - 1 && strcmp(got, CHILD_TEXT) == 0;
	if (status != 0 || !through_map || !through_fd) {
		printf("sharefd memfd-map-run mismatch: child status 0x%x, the child's write %s through the mapping, %s through the descriptor\n", status,
		       through_map ? "seen" : "not seen", through_fd ? "seen" : "not seen");
		return 0;
	}
	printf("sharefd memfd-map-run ok: the child's write seen through the mapping and the descriptor\n");
	return 0;
}

#define FIFO_QUEUED "queued before the checkpoint"
#define FIFO_CHILD " + child"

static int fifo_run(const char *path)
{
	char got[128] = { 0 }, c = 0;
	int rfd, wfd, go[2], status;
	ssize_t n;
	pid_t child;

	setvbuf(stdout, NULL, _IONBF, 0);
	unlink(path);
	if (mkfifo(path, 0600) < 0)
		return 1;
	rfd = open(path, O_RDONLY | O_NONBLOCK);
	wfd = open(path, O_WRONLY);
	if (rfd < 0 || wfd < 0 || fcntl(rfd, F_SETFL, 0) < 0 || write(wfd, FIFO_QUEUED, sizeof(FIFO_QUEUED) - 1) != sizeof(FIFO_QUEUED) - 1 || pipe(go) < 0)
		return 1;
	child = fork();
	if (child < 0)
		return 1;
	if (child == 0) {
		if (read(go[0], &c, 1) != 1)
			_exit(3);
		_exit(write(wfd, FIFO_CHILD, sizeof(FIFO_CHILD) - 1) == sizeof(FIFO_CHILD) - 1 ? 0 : 4);
	}
	sharefd_checkpoint();
	if (write(go[1], &c, 1) != 1 || waitpid(child, &status, 0) != child)
		return 1;
	n = read(rfd, got, sizeof(got) - 1);
	if (n < 0)
		return 1;
	if (status != 0 || strcmp(got, FIFO_QUEUED FIFO_CHILD) != 0) {
		printf("sharefd fifo-run mismatch: child status 0x%x, read %ld bytes: %s\n", status, (long)n, got);
		return 0;
	}
	printf("sharefd fifo-run ok: read %ld bytes: %s\n", (long)n, got);
	return 0;
}

int sharefd_main(int argc, char **argv)
{
	int fd = -1;
	pid_t child;

	if (argc != 3)
		return 2;
	if (strcmp(argv[1], "memfd-run") == 0)
		return memfd_run(argv[2]);
	if (strcmp(argv[1], "offset-run") == 0)
		return offset_run(argv[2]);
	if (strcmp(argv[1], "fifo-run") == 0)
		return fifo_run(argv[2]);
	if (strcmp(argv[1], "memfd-map-run") == 0)
		return memfd_map_run(argv[2]);
	if (strcmp(argv[1], "offset") == 0)
		fd = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0600);
	else if (strcmp(argv[1], "append") == 0)
		fd = open(argv[2], O_WRONLY | O_CREAT | O_APPEND, 0600);
	else if (strcmp(argv[1], "fifo") == 0) {
		if (mkfifo(argv[2], 0600) < 0)
			return 1;
		fd = open(argv[2], O_RDWR);
		if (fd >= 0 && write(fd, "queue", 5) != 5)
			return 1;
	} else if (strcmp(argv[1], "memfd") == 0) {
		const char *name = strrchr(argv[2], '/');

		fd = memfd_create(name ? name + 1 : argv[2], 0);
		if (fd >= 0 && (ftruncate(fd, 4096) < 0 || mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED))
			return 1;
	} else if (strcmp(argv[1], "memfd-reopen") == 0) {
		const char *name = strrchr(argv[2], '/');

		fd = memfd_create(name ? name + 1 : argv[2], 0);
	} else if (strcmp(argv[1], "memfd-fd") == 0) {
		const char *name = strrchr(argv[2], '/');
		static const char text[] = "shared memfd contents\n";

		fd = memfd_create(name ? name + 1 : argv[2], MFD_ALLOW_SEALING);
		if (fd >= 0 && (write(fd, text, sizeof(text) - 1) != sizeof(text) - 1 || ftruncate(fd, 6000) < 0 ||
				fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0 || lseek(fd, 7, SEEK_SET) != 7))
			return 1;
	} else
		return 2;
	if (fd < 0 || (strcmp(argv[1], "offset") == 0 && write(fd, "0123456789", 10) != 10))
		return 1;
	setvbuf(stdout, NULL, _IONBF, 0);
	child = fork();
	if (child < 0)
		return 1;
	if (child == 0 && strcmp(argv[1], "memfd-reopen") == 0 && open("/proc/self/fd/3", O_RDWR) != 4)
		return 1;
	printf("%s %d fd %d\n", child ? "parent" : "child", (int)getpid(), fd);
	for (;;)
		pause();
}
