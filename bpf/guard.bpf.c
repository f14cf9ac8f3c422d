/* SPDX-License-Identifier: Apache-2.0 */
/*
 * nodeguard guard programs: egress allowlist (cgroup sock_addr hooks) and exec
 * allowlist (sched_process_exec tracepoint + bpf_send_signal(SIGKILL)).
 *
 * Loaded by nodeguard/bpf/guard.py with BCC. Only stable ABI is touched: the UAPI
 * struct bpf_sock_addr, the tracepoint's arguments (BCC reads their layout from tracefs)
 * and helpers. No kernel-internal struct is read, so mismatched headers are harmless.
 *
 * One program serves every guarded cgroup: a cgroup id (or one of its ancestors at a
 * level in guarded_levels) maps to a policy id, and every rule map is keyed by policy id.
 * Processes outside guarded cgroups: the cgroup hooks are not attached to them, and the
 * exec tracepoint costs them one or two hash lookups.
 *
 * Compile-time constants (validated by the loader, passed with -D):
 *   NG_MAX_CGROUPS, NG_EGRESS_MAX, NG_EXEC_MAX, NG_AGG_MAX, NG_RINGBUF_PAGES,
 *   NG_AGG_WINDOW_NS, and NG_PIN_DIR for the node agent (maps pinned: see ng_maps.h)
 *
 * The exec tracepoint is attached by the loader (not by BCC's auto-attach): as a plain
 * perf event for `nodeguard run`, as a pinned BPF link for the agent.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include "nodeguard.h"
#include "ng_maps.h"

#define NG_AF_INET 2
#define NG_AF_INET6 10
#define NG_SIGKILL 9
#define NG_MAX_LEVEL 32

/* cgroup id -> {policy id, flags}. Key: cgroup v2 id (directory inode). Written by user
 * space when it guards or unguards a cgroup. */
NG_HASH(cgroup_policy, u64, struct ng_cgroup_policy, NG_MAX_CGROUPS);

/* Fast path for the egress hooks: per (guarded cgroup, attach type) storage holding that
 * cgroup's policy, reached with bpf_get_local_storage (a pointer, no lookup), also from
 * sub-cgroups. Created by the kernel when a program is attached, written by user space
 * right after; until then flags lack NG_POLICY_ACTIVE and the hooks use cgroup_policy. */
NG_CGROUP_STORAGE(egress_policy, struct ng_cgroup_policy);

/* [0] -> bitmask of cgroup levels (depth below the root) that hold a guarded cgroup, so a
 * process in a sub-cgroup of a guarded cgroup is found through its ancestor at that level.
 * Written by user space. */
NG_ARRAY(guarded_levels, u64, 1);

/* (policy id, v4-mapped address prefix) -> allowed port ranges. LPM trie. Written by user
 * space from the compiled policy (ranges of containing prefixes already folded in). */
NG_LPM_TRIE(egress_rules, struct ng_egress_key, struct ng_port_set, NG_EGRESS_MAX);

/* (policy id, path prefix) -> exec rule kind. LPM trie. Written by user space. */
NG_LPM_TRIE(exec_rules, struct ng_exec_key, struct ng_exec_rule, NG_EXEC_MAX);

/* Aggregation of repeated violations: key (cgroup, policy, op, destination / path hash) ->
 * cumulative count and times. Written by these programs; read (and deleted, for cgroups
 * that are gone) by user space, which turns cumulative counts into per-record deltas. */
NG_HASH(agg, struct ng_agg_key, struct ng_agg_value, NG_AGG_MAX);

/* NG_CNT_* -> count, per CPU. Written by these programs, summed by user space. */
NG_PERCPU_ARRAY(counters, u64, NG_CNT_MAX);

/* [0] -> scratch exec key (too large for the BPF stack next to everything else). */
BPF_PERCPU_ARRAY(exec_scratch, struct ng_exec_key, 1);

/* Violation records (struct ng_egress_event / ng_exec_event) to user space. */
NG_RINGBUF(events, NG_RINGBUF_PAGES);

static __always_inline void ng_count(u32 idx)
{
	u64 *c = counters.lookup(&idx);
	if (c)
		(*c)++;
}

/* The policy of the current task's cgroup, or of its nearest guarded ancestor. */
static __always_inline struct ng_cgroup_policy *ng_current_policy(u64 *cgid)
{
	u64 id = bpf_get_current_cgroup_id();
	*cgid = id;
	struct ng_cgroup_policy *pol = cgroup_policy.lookup(&id);
	if (pol)
		return pol;

	int zero = 0;
	u64 *levels = guarded_levels.lookup(&zero);
	if (!levels || !*levels)
		return NULL;
	u64 mask = *levels;
	for (int level = 1; level < NG_MAX_LEVEL; level++) {
		if (!(mask >> level))
			break;
		if (!(mask & (1ULL << level)))
			continue;
		u64 anc = bpf_get_current_ancestor_cgroup_id(level);
		if (!anc)
			break; /* the task is not that deep */
		pol = cgroup_policy.lookup(&anc);
		if (pol)
			return pol;
	}
	return NULL;
}

/*
 * Count one violating attempt under its aggregation key. Returns 1 when a record should
 * be written now (first attempt, or the window since the last record has passed), with
 * the cumulative count and first time to put in it; 0 when the attempt is folded into the
 * aggregate (user space recovers it from the cumulative count later).
 */
static __always_inline int ng_aggregate(struct ng_agg_key *key, u64 now, u64 *total,
					 u64 *first)
{
	struct ng_agg_value *v = agg.lookup(key);
	if (!v) {
		struct ng_agg_value nv = {};
		nv.count = 1;
		nv.first_ns = now;
		nv.last_ns = now;
		nv.last_emit_ns = now;
		if (agg.insert(key, &nv) == 0) {
			*total = 1;
			*first = now;
			return 1;
		}
		v = agg.lookup(key); /* lost an insert race, or the table is full */
		if (!v) {
			ng_count(NG_CNT_AGG_TABLE_FULL);
			*total = 0; /* unaggregated: the record stands for one attempt */
			*first = now;
			return 1;
		}
	}
	*total = __sync_fetch_and_add(&v->count, 1) + 1;
	*first = v->first_ns;
	v->last_ns = now;
	if (now - v->last_emit_ns >= NG_AGG_WINDOW_NS) {
		v->last_emit_ns = now;
		return 1;
	}
	ng_count(NG_CNT_AGGREGATED);
	return 0;
}

static __always_inline void ng_fill_hdr(struct ng_event_hdr *h, u16 op, u16 size,
					 struct ng_cgroup_policy *pol, u64 cgid, u64 now,
					 u64 total, u64 first)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	h->op = op;
	h->size = size;
	h->policy_id = pol->policy_id;
	h->ts_ns = now;
	h->cgroup_id = cgid;
	h->pid = pid_tgid >> 32;
	h->tid = (u32)pid_tgid;
	h->verdict = (pol->flags & NG_POLICY_AUDIT) ? NG_VERDICT_AUDITED : NG_VERDICT_BLOCKED;
	h->_pad = 0;
	h->count_total = total;
	h->first_ns = first;
	bpf_get_current_comm(&h->comm, sizeof(h->comm));
}

/* ------------------------------------------------------------------ egress --- */

static __always_inline int ng_ports_allow(struct ng_port_set *ps, u16 port, u8 proto)
{
	u8 bit = proto == IPPROTO_TCP ? NG_PROTO_TCP :
		 proto == IPPROTO_UDP ? NG_PROTO_UDP : NG_PROTO_OTHER;
	u32 n = ps->count;
	for (int i = 0; i < NG_MAX_PORT_RANGES; i++) {
		if (i >= n)
			break;
		struct ng_port_range *r = &ps->ranges[i];
		if (!(r->protocols & bit))
			continue;
		/* ports mean nothing to other protocols (e.g. ICMP echo ids) */
		if (bit == NG_PROTO_OTHER || (port >= r->lo && port <= r->hi))
			return 1;
	}
	return 0;
}

/* Returns the sock_addr verdict: 1 lets the call through, 0 fails it with EPERM. */
static __always_inline int ng_egress(struct bpf_sock_addr *ctx, int v6, u8 hook)
{
	u64 cgid = 0;
	/* BCC declares get_local_storage as returning int; the helper returns the pointer */
	struct ng_cgroup_policy *pol = (struct ng_cgroup_policy *)(long)egress_policy.get_local_storage(0);
	if (!(pol->flags & NG_POLICY_ACTIVE))
		pol = ng_current_policy(&cgid);
	if (!pol || !(pol->flags & NG_POLICY_EGRESS))
		return 1;

	struct ng_egress_key key;
	__builtin_memset(&key, 0, sizeof(key));
	key.prefixlen = 32 + 128;
	key.policy_id = pol->policy_id;
	if (v6) {
		u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1];
		u32 w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
		__builtin_memcpy(&key.addr[0], &w0, 4);
		__builtin_memcpy(&key.addr[4], &w1, 4);
		__builtin_memcpy(&key.addr[8], &w2, 4);
		__builtin_memcpy(&key.addr[12], &w3, 4);
	} else {
		u32 ip = ctx->user_ip4;
		key.addr[10] = 0xff;
		key.addr[11] = 0xff;
		__builtin_memcpy(&key.addr[12], &ip, 4);
	}
	u16 port = bpf_ntohs((u16)ctx->user_port);
	u8 proto = (u8)ctx->protocol;

	struct ng_port_set *ps = egress_rules.lookup(&key);
	if (ps && ng_ports_allow(ps, port, proto))
		return 1;

	/* violation */
	if (!cgid)
		cgid = bpf_get_current_cgroup_id();
	u64 now = bpf_ktime_get_ns();
	int audit = pol->flags & NG_POLICY_AUDIT;
	ng_count(NG_CNT_VIOLATIONS);
	if (!audit)
		ng_count(NG_CNT_EGRESS_DENIED);

	struct ng_agg_key ak;
	__builtin_memset(&ak, 0, sizeof(ak));
	ak.cgroup_id = cgid;
	ak.policy_id = pol->policy_id;
	ak.op = NG_OP_EGRESS;
	ak.port = port;
	__builtin_memcpy(ak.addr, key.addr, 16);
	ak.protocol = proto;
	ak.family = v6 ? NG_AF_INET6 : NG_AF_INET;

	u64 total, first;
	if (ng_aggregate(&ak, now, &total, &first)) {
		struct ng_egress_event *e = events.ringbuf_reserve(sizeof(struct ng_egress_event));
		if (!e) {
			ng_count(NG_CNT_RINGBUF_FULL);
		} else {
			ng_fill_hdr(&e->hdr, NG_OP_EGRESS, sizeof(*e), pol, cgid, now, total, first);
			__builtin_memcpy(e->addr, key.addr, 16);
			e->port = port;
			e->protocol = proto;
			e->family = ak.family;
			e->hook = hook;
			e->_pad[0] = 0;
			e->_pad[1] = 0;
			e->_pad[2] = 0;
			events.ringbuf_submit(e, 0);
			ng_count(NG_CNT_EVENTS_EMITTED);
		}
	}
	return audit ? 1 : 0;
}

int ng_connect4(struct bpf_sock_addr *ctx) { return ng_egress(ctx, 0, NG_HOOK_CONNECT4); }
int ng_connect6(struct bpf_sock_addr *ctx) { return ng_egress(ctx, 1, NG_HOOK_CONNECT6); }
int ng_sendmsg4(struct bpf_sock_addr *ctx) { return ng_egress(ctx, 0, NG_HOOK_SENDMSG4); }
int ng_sendmsg6(struct bpf_sock_addr *ctx) { return ng_egress(ctx, 1, NG_HOOK_SENDMSG6); }

/* -------------------------------------------------------------------- exec --- */

/* "prefix*": the part after the literal prefix must not contain '/'. */
static __always_inline int ng_segment_ok(const char *p, u32 from, int len)
{
	for (int i = 0; i < NG_PATH_MAX; i++) {
		if (i >= len)
			break;
		if (i >= from && p[i] == '/')
			return 0;
	}
	return 1;
}

/* "prefix**": refuse "//", "/./", "/../", and a trailing "/." or "/..", so that
 * "/opt/agent/../../tmp/x" cannot pass as "below /opt/agent/". */
static __always_inline int ng_path_clean(const char *p, int len)
{
	char p1 = 0, p2 = 0, p3 = 0;
	for (int i = 0; i < NG_PATH_MAX; i++) {
		if (i >= len)
			break;
		char c = p[i];
		if (c == '/' || c == 0) {
			if (c == '/' && p1 == '/')
				return 0;
			if (p1 == '.' && p2 == '/')
				return 0;
			if (p1 == '.' && p2 == '.' && p3 == '/')
				return 0;
		}
		if (c == 0)
			break;
		p3 = p2;
		p2 = p1;
		p1 = c;
	}
	return 1;
}

static __always_inline u64 ng_fnv1a64(const char *p, int len)
{
	u64 h = 0xcbf29ce484222325ULL;
	for (int i = 0; i < NG_PATH_MAX; i++) {
		if (i >= len)
			break;
		char c = p[i];
		if (c == 0)
			break;
		h ^= (u8)c;
		h *= 0x100000001b3ULL;
	}
	return h;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
	u64 cgid;
	struct ng_cgroup_policy *pol = ng_current_policy(&cgid);
	if (!pol || !(pol->flags & NG_POLICY_EXEC))
		return 0;

	int zero = 0;
	struct ng_exec_key *k = exec_scratch.lookup(&zero);
	if (!k)
		return 0;
	__builtin_memset(k, 0, sizeof(*k));
	k->prefixlen = 32 + NG_PATH_MAX * 8;
	k->policy_id = pol->policy_id;

	unsigned short off = args->data_loc_filename & 0xFFFF;
	int len = bpf_probe_read_kernel_str(k->path, NG_PATH_MAX, (void *)args + off);

	int allowed = 0;
	if (len >= NG_PATH_MAX) {
		/* as long as (or longer than) the kernel checks: no rule can match it */
		ng_count(NG_CNT_PATH_TOO_LONG);
	} else if (len > 0) {
		struct ng_exec_rule *r = exec_rules.lookup(k);
		if (r) {
			if (r->kind == NG_EXEC_EXACT)
				allowed = 1;
			else if (r->kind == NG_EXEC_SEGMENT)
				allowed = ng_segment_ok(k->path, r->prefix_bytes, len);
			else if (r->kind == NG_EXEC_SUBTREE)
				allowed = ng_path_clean(k->path, len);
		}
	}
	if (allowed)
		return 0;

	int audit = pol->flags & NG_POLICY_AUDIT;
	if (!audit) {
		/* The new image is in place but has not run an instruction yet: SIGKILL is
		 * delivered on the way back to user space. */
		bpf_send_signal(NG_SIGKILL);
		ng_count(NG_CNT_EXEC_KILLED);
	}
	ng_count(NG_CNT_VIOLATIONS);

	u64 now = bpf_ktime_get_ns();
	struct ng_agg_key ak;
	__builtin_memset(&ak, 0, sizeof(ak));
	ak.cgroup_id = cgid;
	ak.policy_id = pol->policy_id;
	ak.op = NG_OP_EXEC;
	u64 h = ng_fnv1a64(k->path, len);
	__builtin_memcpy(ak.addr, &h, 8);

	u64 total, first;
	if (!ng_aggregate(&ak, now, &total, &first))
		return 0;
	struct ng_exec_event *e = events.ringbuf_reserve(sizeof(struct ng_exec_event));
	if (!e) {
		ng_count(NG_CNT_RINGBUF_FULL);
		return 0;
	}
	ng_fill_hdr(&e->hdr, NG_OP_EXEC, sizeof(*e), pol, cgid, now, total, first);
	e->old_pid = args->old_pid;
	e->path_len = len > 0 ? len : 0;
	bpf_probe_read_kernel(e->path, NG_PATH_MAX, k->path);
	events.ringbuf_submit(e, 0);
	ng_count(NG_CNT_EVENTS_EMITTED);
	return 0;
}
