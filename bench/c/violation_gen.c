/* Violation generator for bench/stream_bench.py: prints "attempts N", "denied N",
 * "allowed N" and "elapsed_s X".
 * usage: violation_gen RATE SECONDS
 * Sends one-byte UDP datagrams with sendto() to distinct loopback destinations in
 * 127.64.0.0/10 (address and port change on every attempt, so no two attempts share a
 * kernel aggregation key and every attempt is its own violation record), paced at RATE
 * attempts per second for SECONDS. Run inside a guarded cgroup whose policy denies them:
 * each attempt fails with EPERM in the cgroup sendmsg4 hook and never leaves the host. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s RATE SECONDS\n", argv[0]);
		return 2;
	}
	double rate = atof(argv[1]), seconds = atof(argv[2]);
	if (rate <= 0 || seconds <= 0)
		return 2;
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	if (s < 0) {
		perror("socket");
		return 1;
	}
	long attempts = 0, denied = 0, allowed = 0, other = 0;
	double t0 = now_s(), now = t0;
	const unsigned base = 0x7f400000u; /* 127.64.0.0 */
	char byte = 0;
	while ((now = now_s()) - t0 < seconds) {
		long due = (long)((now - t0) * rate);
		while (attempts < due) {
			unsigned long i = (unsigned long)attempts;
			struct sockaddr_in sa = {
				.sin_family = AF_INET,
				.sin_port = htons((unsigned short)(1024 + (i & 1023))),
				.sin_addr.s_addr = htonl(base + (unsigned)((i >> 10) & 0x3fffff)),
			};
			if (sendto(s, &byte, 1, 0, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
				if (errno == EPERM)
					denied++;
				else
					other++;
			} else {
				allowed++;
			}
			attempts++;
		}
		struct timespec pause = {0, 200000}; /* 0.2 ms */
		nanosleep(&pause, NULL);
	}
	printf("attempts %ld\ndenied %ld\nallowed %ld\nother_errors %ld\nelapsed_s %.3f\n",
	       attempts, denied, allowed, other, now_s() - t0);
	return 0;
}
