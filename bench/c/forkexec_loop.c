/* fork + execve + waitpid loop for bench/: prints "ns_per_op <float>".
 * usage: forkexec_loop PROGRAM N */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s PROGRAM N\n", argv[0]);
		return 2;
	}
	long n = atol(argv[2]);
	int failures = 0;
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (long i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid == 0) {
			char *args[] = {argv[1], NULL};
			execv(argv[1], args);
			_exit(127);
		}
		int status;
		waitpid(pid, &status, 0);
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			failures++;
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
	printf("ns_per_op %.2f\nfailures %d\n", ns / n, failures);
	return failures ? 1 : 0;
}
