/*
 * finish.c: a program that says when it is ready and waits to be told to
 * finish. It prints a CRH-READY line, then waits in sigsuspend() for
 * SIGUSR1 (blocked outside the wait, so the signal cannot slip in between
 * the check and the wait); crh sends it once the program is ready, and
 * again to the restored process.
 *
 *   crh repro examples/repro/finish.c --when-ready --finish-signal USR1
 */
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

static volatile sig_atomic_t finish;

static void on_usr1(int sig)
{
	(void)sig;
	finish = 1;
}

int main(void)
{
	sigset_t usr1, others;

	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigprocmask(SIG_BLOCK, &usr1, &others);
	signal(SIGUSR1, on_usr1);
	printf("pid %d\nCRH-READY\n", (int)getpid());
	fflush(stdout);
	while (!finish)
		sigsuspend(&others);
	printf("finished\n");
	return 0;
}
