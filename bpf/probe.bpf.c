/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Feature probes for `nodeguard doctor` (nodeguard/bpf/probe.py).
 *
 * Compiled ONCE with BCC; each program is then LOADED (verified by the kernel) with the
 * program type and expected attach type the guard uses, and immediately closed again.
 * Nothing here is ever attached to a cgroup or a tracepoint, and every program returns
 * "allow" / does nothing unless a map that no one fills says otherwise, so even a mistaken
 * attach could not deny or kill anything.
 *
 * The programs use the same helpers, context fields and map kinds as bpf/guard.bpf.c, and
 * the maps use the shared structs from include/nodeguard.h, so a kernel (or a header) that
 * cannot run the guard fails here first, with a precise name.
 *
 * Function names deliberately avoid BCC's auto-attach prefixes (kprobe__, tracepoint__,
 * lsm__, ...).
 */
#include "nodeguard.h"

#define PROBE_SIGKILL 9
#define PROBE_SOCK_RAW 3

/* cgroup id -> policy, as in the guard. Never written: every lookup misses. */
BPF_HASH(probe_cgroup_policy, __u64, struct ng_cgroup_policy, 16);

/* (policy id, v4-mapped address prefix) -> allowed port ranges. Never written by user
 * space except by the probe's own insert/lookup/delete round trip (map check only). */
BPF_LPM_TRIE(probe_egress, struct ng_egress_key, struct ng_port_set, 16);

/* (policy id, exec path prefix) -> rule kind. Never written. */
BPF_LPM_TRIE(probe_exec_rules, struct ng_exec_key, struct ng_exec_rule, 16);

/* Violation records. One page: the probe never submits anything (it is never attached). */
BPF_RINGBUF_OUTPUT(probe_events, 1);

/* Per-CPU counters, as in the guard. */
BPF_PERCPU_ARRAY(probe_counters, __u64, NG_CNT_MAX);

/* [0] -> scratch exec key (too large for the stack next to everything else), as in the guard. */
BPF_PERCPU_ARRAY(probe_exec_scratch, struct ng_exec_key, 1);

static __always_inline void probe_count(__u32 idx)
{
	__u64 *v = probe_counters.lookup(&idx);
	if (v)
		*v += 1;
}

/* Policy of the calling task's cgroup, or NULL (always NULL here: the map stays empty). */
static __always_inline struct ng_cgroup_policy *probe_policy(void)
{
	__u64 cgid = bpf_get_current_cgroup_id();
	return probe_cgroup_policy.lookup(&cgid);
}

static __always_inline int probe_egress_v4(struct bpf_sock_addr *ctx)
{
	struct ng_cgroup_policy *pol = probe_policy();
	if (!pol)
		return 1;

	struct ng_egress_key key;
	__builtin_memset(&key, 0, sizeof(key));
	key.prefixlen = 32 + 128;
	key.policy_id = pol->policy_id;
	key.addr[10] = 0xff;
	key.addr[11] = 0xff;
	__u32 ip4 = ctx->user_ip4;
	__builtin_memcpy(&key.addr[12], &ip4, sizeof(ip4));
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	__u8 proto = (__u8)ctx->protocol;

	struct ng_port_set *ps = probe_egress.lookup(&key);
	if (ps && ps->count > 0 && ps->ranges[0].lo <= port && proto)
		probe_count(NG_CNT_VIOLATIONS);
	return 1; /* a probe never denies */
}

static __always_inline int probe_egress_v6(struct bpf_sock_addr *ctx)
{
	struct ng_cgroup_policy *pol = probe_policy();
	if (!pol)
		return 1;

	struct ng_egress_key key;
	__builtin_memset(&key, 0, sizeof(key));
	key.prefixlen = 32 + 128;
	key.policy_id = pol->policy_id;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		__u32 w = ctx->user_ip6[i];
		__builtin_memcpy(&key.addr[i * 4], &w, sizeof(w));
	}
	struct ng_port_set *ps = probe_egress.lookup(&key);
	if (ps)
		probe_count(NG_CNT_VIOLATIONS);
	return 1;
}

/* BPF_PROG_TYPE_CGROUP_SOCK_ADDR, expected attach type BPF_CGROUP_INET4_CONNECT */
int ng_probe_connect4(struct bpf_sock_addr *ctx)
{
	return probe_egress_v4(ctx);
}

/* ... BPF_CGROUP_INET6_CONNECT */
int ng_probe_connect6(struct bpf_sock_addr *ctx)
{
	return probe_egress_v6(ctx);
}

/* ... BPF_CGROUP_UDP4_SENDMSG */
int ng_probe_sendmsg4(struct bpf_sock_addr *ctx)
{
	return probe_egress_v4(ctx);
}

/* ... BPF_CGROUP_UDP6_SENDMSG */
int ng_probe_sendmsg6(struct bpf_sock_addr *ctx)
{
	return probe_egress_v6(ctx);
}

/* BPF_PROG_TYPE_CGROUP_SOCK, expected attach type BPF_CGROUP_INET_SOCK_CREATE */
int ng_probe_sock_create(struct bpf_sock *sk)
{
	struct ng_cgroup_policy *pol = probe_policy();
	if (pol && sk->type == PROBE_SOCK_RAW)
		probe_count(NG_CNT_VIOLATIONS);
	return 1;
}

/* BPF_PROG_TYPE_TRACEPOINT: the exec check's building blocks. Reads a string from the
 * tracepoint record (bpf_probe_read_kernel_str, as the guard reads the exec filename) into
 * a per-CPU scratch key and looks it up in the exec LPM trie. */
int ng_probe_tracepoint(void *ctx)
{
	struct ng_cgroup_policy *pol = probe_policy();
	if (!pol)
		return 0;

	int zero = 0;
	struct ng_exec_key *key = probe_exec_scratch.lookup(&zero);
	if (!key)
		return 0;
	__builtin_memset(key, 0, sizeof(*key));
	key->prefixlen = 32 + NG_PATH_MAX * 8;
	key->policy_id = pol->policy_id;
	int len = bpf_probe_read_kernel_str(key->path, NG_PATH_MAX, ctx + 8);
	if (len <= 0)
		return 0;
	struct ng_exec_rule *rule = probe_exec_rules.lookup(key);
	if (!rule)
		probe_count(NG_CNT_VIOLATIONS);
	return 0;
}

/* Tracepoint + bpf_send_signal(SIGKILL), gated on a cgroup policy that never exists. */
int ng_probe_send_signal(void *ctx)
{
	struct ng_cgroup_policy *pol = probe_policy();
	if (!pol)
		return 0;
	if (pol->flags & NG_POLICY_AUDIT)
		return 0;
	bpf_send_signal(PROBE_SIGKILL);
	probe_count(NG_CNT_EXEC_KILLED);
	return 0;
}

/* Tracepoint + bpf_get_current_ancestor_cgroup_id (guarded sub-cgroups). */
int ng_probe_ancestor_cgroup(void *ctx)
{
	__u64 cgid = bpf_get_current_ancestor_cgroup_id(1);
	struct ng_cgroup_policy *pol = probe_cgroup_policy.lookup(&cgid);
	if (pol)
		probe_count(NG_CNT_VIOLATIONS);
	return 0;
}

/* Tracepoint + BPF ring buffer reserve/submit of a violation record. */
int ng_probe_ringbuf(void *ctx)
{
	struct ng_cgroup_policy *pol = probe_policy();
	if (!pol)
		return 0;

	struct ng_exec_event *ev = probe_events.ringbuf_reserve(sizeof(struct ng_exec_event));
	if (!ev) {
		probe_count(NG_CNT_RINGBUF_FULL);
		return 0;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->hdr.op = NG_OP_EXEC;
	ev->hdr.size = sizeof(struct ng_exec_event);
	ev->hdr.policy_id = pol->policy_id;
	ev->hdr.ts_ns = bpf_ktime_get_ns();
	ev->hdr.cgroup_id = bpf_get_current_cgroup_id();
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	ev->hdr.pid = pid_tgid >> 32;
	ev->hdr.tid = (__u32)pid_tgid;
	ev->hdr.verdict = NG_VERDICT_BLOCKED;
	bpf_get_current_comm(ev->hdr.comm, sizeof(ev->hdr.comm));
	probe_events.ringbuf_submit(ev, 0);
	probe_count(NG_CNT_EVENTS_EMITTED);
	return 0;
}

/* Raw tracepoint (signal_generate: reports seccomp kills): reads the signal number from
 * the raw arguments (args[0] is the sig), gated on a cgroup policy that never exists. */
int ng_probe_raw_tracepoint(struct bpf_raw_tracepoint_args *ctx)
{
	struct ng_cgroup_policy *pol = probe_policy();
	if (!pol)
		return 0;
	if ((int)ctx->args[0] == 31 /* SIGSYS */)
		probe_count(NG_CNT_VIOLATIONS);
	return 0;
}
