/* SPDX-License-Identifier: Apache-2.0 */
/* The cheapest possible cgroup connect hook: allows everything. bench/ attaches it to a
 * cgroup of its own to measure the kernel's fixed cost of running any cgroup sock_addr
 * program, so nodeguard's own lookup cost can be told apart from it. */
#include <uapi/linux/bpf.h>

int floor_connect4(struct bpf_sock_addr *ctx)
{
	return 1;
}
