/*
 * tracerpid.c: a program that looks at its tracer — TracerPid in
 * /proc/self/status — and says whether it has one. Under any ptrace-based
 * harness it has, natively it has not: the uninterrupted traced run cannot
 * be the reference, and crh says so instead of giving a verdict on the
 * restore (PERTURBED, exit 3; docs/reproducing.md).
 *
 *   crh repro examples/repro/tracerpid.c --checkpoint-at checkpoint_here
 */
#include <stdio.h>
#include <string.h>

__attribute__((noipa)) void checkpoint_here(void) {}

static int tracer_pid(void)
{
	char line[256];
	int pid = -1;
	FILE *f = fopen("/proc/self/status", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "TracerPid: %d", &pid) == 1)
			break;
	fclose(f);
	return pid;
}

int main(void)
{
	checkpoint_here();
	printf("traced: %s\n", tracer_pid() > 0 ? "yes" : "no");
	return 0;
}
