/*
 * exclusive-daemon.c: a program that leaves a daemon behind and claims its
 * working directory with files created exclusively (O_CREAT|O_EXCL). Every
 * run must start clean — nothing of the previous run still running, none
 * of its files in the directory — or the second run's claim fails with
 * EEXIST and its output differs from the first's.
 *
 *   crh repro examples/repro/exclusive-daemon.c --checkpoint-at checkpoint_here
 *
 * The daemon (fork, setsid, fork again: its parent exits at once) claims
 * daemon.lock and then sleeps for ten minutes; the program waits until
 * daemon.lock exists, claims main.lock, is checkpointed halfway through a
 * loop and prints what it claimed.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

__attribute__((noipa)) void checkpoint_here(void) {}

static int claim(const char *name)
{
	int fd = open(name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);

	if (fd < 0) {
		printf("%s: %s\n", name, strerror(errno));
		return 1;
	}
	close(fd);
	printf("claimed %s\n", name);
	return 0;
}

int main(void)
{
	pid_t first = fork();
	unsigned long sum = 0;

	if (first == 0) {
		setsid();
		if (fork() != 0)
			_exit(0);
		if (open("daemon.lock", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644) < 0)
			_exit(1);
		sleep(600);
		_exit(0);
	}
	waitpid(first, NULL, 0);
	for (int i = 0; i < 500 && access("daemon.lock", F_OK) != 0; i++)
		usleep(10000);
	printf("daemon.lock %s\n", access("daemon.lock", F_OK) == 0 ? "exists" : "missing");
	if (claim("main.lock"))
		return 1;
	for (int i = 0; i < 100000; i++) {
		if (i == 50000)
			checkpoint_here();
		sum += (unsigned long)i * i;
	}
	printf("sum %lu\n", sum);
	return 0;
}
