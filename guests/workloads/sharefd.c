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
 * Then the parent forks; each process writes a line to stdout and sleeps
 * in pause() until killed. The host stops the two and checkpoints them.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int sharefd_main(int argc, char **argv);

int sharefd_main(int argc, char **argv)
{
	int fd = -1;
	pid_t child;

	if (argc != 3)
		return 2;
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
	printf("%s %d fd %d\n", child ? "parent" : "child", (int)getpid(), fd);
	for (;;)
		pause();
}
