/* connect() latency loop for bench/: prints "ns_per_op <float>".
 * usage: connect_loop udp|tcp HOST PORT ITERATIONS
 *   udp: one UDP socket connect()ed to HOST:PORT again and again (the syscall and the
 *        cgroup connect hook, nothing else)
 *   tcp: socket + connect + close to a listener on HOST:PORT (a full loopback handshake)
 * Only loopback addresses are used by bench/. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s udp|tcp HOST PORT N\n", argv[0]);
		return 2;
	}
	int tcp = strcmp(argv[1], "tcp") == 0;
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
	if (inet_pton(AF_INET, argv[2], &sa.sin_addr) != 1)
		return 2;
	long n = atol(argv[4]);
	int failures = 0;
	int udp = tcp ? -1 : socket(AF_INET, SOCK_DGRAM, 0);
	double t0 = now_ns();
	for (long i = 0; i < n; i++) {
		if (tcp) {
			int s = socket(AF_INET, SOCK_STREAM, 0);
			if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) != 0)
				failures++;
			close(s);
		} else if (connect(udp, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
			failures++;
		}
	}
	double t1 = now_ns();
	printf("ns_per_op %.2f\nfailures %d\n", (t1 - t0) / n, failures);
	return failures ? 1 : 0;
}
