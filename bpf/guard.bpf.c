/* SPDX-License-Identifier: Apache-2.0 */
/*
 * nodeguard guard programs: egress allowlist (cgroup sock_addr hooks), exec allowlist
 * (sched_process_exec tracepoint + bpf_send_signal(SIGKILL)), socket kinds (cgroup
 * sock_create), process budgets (task_newtask / sched_process_exit / sched_process_exec),
 * and the reports of the syscall deny list (the seccomp filter that user space installs
 * kills the caller; the signal_generate raw tracepoint sees that kill and reports it; the
 * audit action is seen by per-syscall sys_enter tracepoints attached on demand).
 *
 * Loaded by nodeguard/bpf/guard.py with BCC. Only stable ABI is touched: the UAPI
 * struct bpf_sock_addr, the tracepoint's arguments (BCC reads their layout from tracefs)
 * and helpers. No kernel-internal struct is read, so mismatched headers are harmless.
 *
 * One program serves every guarded cgroup: a cgroup id (or one of its ancestors at a
 * level in guarded_levels) maps to a policy id, and every rule map is keyed by policy id.
 * Processes outside guarded cgroups: the cgroup hooks are not attached to them, and the
 * exec tracepoints cost them one or two hash lookups and one update (ng_exec_enter).
 *
 * Compile-time constants (validated by the loader, passed with -D):
 *   NG_MAX_CGROUPS, NG_EGRESS_MAX, NG_EXEC_MAX, NG_AGG_MAX, NG_RINGBUF_PAGES,
 *   NG_AGG_WINDOW_NS, NG_SYSCALL_MAX, NG_SOCKET_MAX, NG_POLICY_MAX, and NG_PIN_DIR for the
 *   node agent (maps pinned: see ng_maps.h)
 *
 * Tracepoints are attached by the loader (not by BCC's auto-attach): as plain perf events
 * (raw tracepoint fds) for `nodeguard run`, as pinned BPF links for the agent.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include "nodeguard.h"
#include "ng_maps.h"

#define NG_AF_INET 2
#define NG_AF_INET6 10
#define NG_AF_PACKET 17
#define NG_SOCK_PACKET 10
#define NG_SIGKILL 9
#define NG_SIGSYS 31
#define NG_SYS_SECCOMP 1       /* siginfo si_code of a seccomp kill */
#define NG_CLONE_THREAD 0x00010000
#define NG_AUDIT_ARCH_I386 0x40000003u
#define NG_X32_SYSCALL_BIT 0x40000000u
#if defined(__TARGET_ARCH_arm64) || defined(__aarch64__)
#define NG_AUDIT_ARCH_NATIVE 0xc00000b7u
#else
#define NG_AUDIT_ARCH_NATIVE 0xc000003eu
#endif
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

/* (policy id, syscall number [| NG_SYSCALL_COMPAT]) -> 1 for every syscall the policy
 * denies. Written by user space with the policy; read by the seccomp-kill report and by
 * the audit tracepoints. */
NG_HASH(syscall_deny, struct ng_syscall_key, u32, NG_SYSCALL_MAX);

/* (policy id, address family) -> denied types / protocols. Written by user space with the
 * policy; read by the sock_create hook (AF_INET/AF_INET6) and the audit tracepoint on
 * socket() (other families, audit only: in enforce mode the seccomp filter refuses them). */
NG_HASH(socket_deny, struct ng_socket_key, struct ng_socket_rule, NG_SOCKET_MAX);

/* policy id -> its process budgets. Written by user space with the policy. */
NG_HASH(policy_limits, u32, struct ng_limits, NG_POLICY_MAX);

/* guarded cgroup id (the pod) -> live budget state. Created by user space when it guards
 * a cgroup whose policy has limits (processes seeded from the cgroup), then updated by the
 * fork / exit / exec programs; removed by user space when the cgroup is unguarded. */
NG_HASH(budget, u64, struct ng_budget, NG_MAX_CGROUPS);

/* [0] -> scratch exec key (too large for the BPF stack next to everything else). */
BPF_PERCPU_ARRAY(exec_scratch, struct ng_exec_key, 1);

/* thread id -> when its execve began, and by which task, for execs that began outside
 * every guarded cgroup. Written at sys_enter_execve(at), removed at sys_exit (and at
 * sched_process_exec for a non-leader thread's exec); read by the exec programs. Kernel
 * only: user space never reads it. */
struct ng_exec_origin {
	u64 began_ns;
	u64 task; /* bpf_get_current_task(): compared, never dereferenced */
};
NG_LRU_HASH(exec_begun_outside, u32, struct ng_exec_origin, NG_EXEC_BEGUN_MAX);

/* Violation records (struct ng_egress_event / ng_exec_event) to user space. */
NG_RINGBUF(events, NG_RINGBUF_PAGES);

static __always_inline void ng_count(u32 idx)
{
	u64 *c = counters.lookup(&idx);
	if (c)
		(*c)++;
}

/* The policy of the current task's cgroup, or of its nearest guarded ancestor, whose id
 * goes to *guarded (the pod's cgroup: where its budgets are kept). */
static __always_inline struct ng_cgroup_policy *ng_current_policy_at(u64 *cgid, u64 *guarded)
{
	u64 id = bpf_get_current_cgroup_id();
	*cgid = id;
	*guarded = id;
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
		if (pol) {
			*guarded = anc;
			return pol;
		}
	}
	return NULL;
}

static __always_inline struct ng_cgroup_policy *ng_current_policy(u64 *cgid)
{
	u64 guarded;
	return ng_current_policy_at(cgid, &guarded);
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

/* Reserve a record; NULL (counted) when the ring buffer is full. ``total`` is the
 * record's cumulative count: 0 for an unaggregated record, whose attempt no aggregate
 * keeps either, so it is lost for good (NG_CNT_LOST_ATTEMPTS); an aggregated one is
 * recovered by user space from the aggregate table. */
static __always_inline void *ng_reserve(u32 size, u64 total)
{
	void *e = events.ringbuf_reserve(size);
	if (!e) {
		ng_count(NG_CNT_RINGBUF_FULL);
		if (!total)
			ng_count(NG_CNT_LOST_ATTEMPTS);
	}
	return e;
}

static __always_inline void ng_submit(void *e)
{
	events.ringbuf_submit(e, 0);
	ng_count(NG_CNT_EVENTS_EMITTED);
}

/* A zeroed aggregation key (padding included) for one violation kind of a cgroup. */
static __always_inline void ng_agg_key_init(struct ng_agg_key *ak, u64 cgid,
					    struct ng_cgroup_policy *pol, u16 op)
{
	__builtin_memset(ak, 0, sizeof(*ak));
	ak->cgroup_id = cgid;
	ak->policy_id = pol->policy_id;
	ak->op = op;
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
	ng_agg_key_init(&ak, cgid, pol, NG_OP_EGRESS);
	ak.port = port;
	__builtin_memcpy(ak.addr, key.addr, 16);
	ak.protocol = proto;
	ak.family = v6 ? NG_AF_INET6 : NG_AF_INET;

	u64 total, first;
	if (ng_aggregate(&ak, now, &total, &first)) {
		struct ng_egress_event *e = ng_reserve(sizeof(struct ng_egress_event), total);
		if (e) {
			ng_fill_hdr(&e->hdr, NG_OP_EGRESS, sizeof(*e), pol, cgid, now, total, first);
			__builtin_memcpy(e->addr, key.addr, 16);
			e->port = port;
			e->protocol = proto;
			e->family = ak.family;
			e->hook = hook;
			e->_pad[0] = 0;
			e->_pad[1] = 0;
			e->_pad[2] = 0;
			ng_submit(e);
		}
	}
	return audit ? 1 : 0;
}

int ng_connect4(struct bpf_sock_addr *ctx) { return ng_egress(ctx, 0, NG_HOOK_CONNECT4); }
int ng_connect6(struct bpf_sock_addr *ctx) { return ng_egress(ctx, 1, NG_HOOK_CONNECT6); }
int ng_sendmsg4(struct bpf_sock_addr *ctx) { return ng_egress(ctx, 0, NG_HOOK_SENDMSG4); }
int ng_sendmsg6(struct bpf_sock_addr *ctx) { return ng_egress(ctx, 1, NG_HOOK_SENDMSG6); }

/* ------------------------------------------------------------------ limits --- */

/* Generic cell rate algorithm on one theoretical-arrival-time word: conforming when the
 * next slot is at most `tolerance` ahead of now. Compare-and-swap, so concurrent forks on
 * several CPUs each take their own slot. Returns 1 when the event is within budget. */
static __always_inline int ng_gcra(u64 *tat, u64 now, u64 interval, u64 tolerance)
{
	for (int i = 0; i < 4; i++) {
		u64 old = *(volatile u64 *)tat;
		u64 base = old > now ? old : now;
		if (base - now > tolerance)
			return 0;
		if (__sync_val_compare_and_swap(tat, old, base + interval) == old)
			return 1;
	}
	return 0; /* lost four races in a row: only a flood does that, count it as one */
}

/* The budget state of a guarded cgroup; created (processes unknown = 0) when user space
 * has not seeded it yet. */
static __always_inline struct ng_budget *ng_budget_of(u64 gid)
{
	struct ng_budget *b = budget.lookup(&gid);
	if (b)
		return b;
	struct ng_budget nb = {};
	budget.insert(&gid, &nb);
	return budget.lookup(&gid);
}

/* Report (aggregated per kind) and, in enforce mode, kill the current process. */
static __always_inline void ng_limit_broken(struct ng_cgroup_policy *pol, u64 cgid,
					    struct ng_limits *lim, struct ng_budget *b, u32 kind)
{
	int audit = pol->flags & NG_POLICY_AUDIT;
	if (!audit) {
		bpf_send_signal(NG_SIGKILL);
		ng_count(NG_CNT_LIMIT_KILLED);
	}
	ng_count(NG_CNT_VIOLATIONS);

	u64 now = bpf_ktime_get_ns();
	struct ng_agg_key ak;
	ng_agg_key_init(&ak, cgid, pol, NG_OP_LIMIT);
	__builtin_memcpy(ak.addr, &kind, 4);
	u64 total, first;
	if (!ng_aggregate(&ak, now, &total, &first))
		return;
	struct ng_limit_event *e = ng_reserve(sizeof(struct ng_limit_event), total);
	if (!e)
		return;
	ng_fill_hdr(&e->hdr, NG_OP_LIMIT, sizeof(*e), pol, cgid, now, total, first);
	e->limit = kind;
	e->budget = kind == NG_LIMIT_PROCESSES ? lim->max_processes :
		    kind == NG_LIMIT_FORK_RATE ? lim->fork_rate : lim->exec_rate;
	e->burst = kind == NG_LIMIT_PROCESSES ? 0 :
		   kind == NG_LIMIT_FORK_RATE ? lim->fork_burst : lim->exec_burst;
	e->_pad = 0;
	e->observed = b->processes;
	ng_submit(e);
}

/* ------------------------------------------------- execs that began outside --- */

/*
 * A process can be moved into a guarded cgroup while it is inside execve(): then the exec
 * began outside and ends inside. Only someone allowed to write the cgroup's cgroup.procs
 * can do that: the container runtime. runc 1.1's `runc init` re-executes a sealed memfd
 * copy of itself (/dev/fd/N) in the very microseconds runc moves it into the container's
 * cgroup; killing that exec fails the container start ("read init-p: connection reset by
 * peer"). Such an exec is judged by where it began: let through, counted
 * (NG_CNT_EXEC_BEGUN_OUTSIDE), not reported as the workload's. A process already inside
 * a guarded cgroup when its execve begins is always checked: the workload cannot start an
 * exec outside its own cgroup. Costs every execve on the node one hash update.
 *
 * ng_exec_enter runs at sys_enter_execve and sys_enter_execveat, ng_exec_leave at their
 * sys_exit (one program each, attached twice).
 */
int ng_exec_enter(void *ctx)
{
	u64 cgid;
	u32 tid = (u32)bpf_get_current_pid_tgid();
	if (ng_current_policy(&cgid)) {
		exec_begun_outside.delete(&tid); /* inside: checked as usual */
		return 0;
	}
	struct ng_exec_origin origin = {};
	origin.began_ns = bpf_ktime_get_ns();
	origin.task = bpf_get_current_task();
	exec_begun_outside.update(&tid, &origin);
	return 0;
}

int ng_exec_leave(void *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	exec_begun_outside.delete(&tid);
	return 0;
}

/* Did the exec of thread `tid` (the caller of execve) begin outside every guarded cgroup,
 * recently, in this very task? A mark older than the window, or left by another task
 * under a reused tid, is ignored: the exec is checked as usual. (An exec by a non-leader
 * thread leaves its old tid's mark to the window: sys_exit runs under the new pid. Only
 * that same task could match it, and it no longer has that tid. Deleting it in the exec
 * program instead kept a value live across the path loops and blew the verifier's
 * budget.) The exec-rate program looks under the current pid: for an exec by a
 * non-leader thread it finds nothing and counts the exec (fail closed). */
static __always_inline int ng_exec_began_outside(u32 tid)
{
	struct ng_exec_origin *origin = exec_begun_outside.lookup(&tid);
	if (!origin)
		return 0;
	/* the same task (the task struct survives its exec, a reused tid is another task) */
	if (origin->task != bpf_get_current_task())
		return 0;
	return bpf_ktime_get_ns() - origin->began_ns < NG_EXEC_BEGUN_WINDOW_NS;
}

/* A new process (not a thread) in a guarded pod: count it, check maxProcesses and
 * forksPerSecond. Runs in the parent, after the child exists and before it first runs;
 * the parent (the one that broke the budget) is killed, so a fork bomb dies out. */
TRACEPOINT_PROBE(task, task_newtask)
{
	if (args->clone_flags & NG_CLONE_THREAD)
		return 0;
	u64 cgid, gid;
	struct ng_cgroup_policy *pol = ng_current_policy_at(&cgid, &gid);
	if (!pol || !(pol->flags & NG_POLICY_LIMITS))
		return 0;
	u32 pid = pol->policy_id;
	struct ng_limits *lim = policy_limits.lookup(&pid);
	if (!lim)
		return 0;
	struct ng_budget *b = ng_budget_of(gid);
	if (!b)
		return 0;
	s64 procs = __sync_fetch_and_add(&b->processes, 1) + 1;
	if (lim->max_processes && procs > (s64)lim->max_processes) {
		ng_limit_broken(pol, cgid, lim, b, NG_LIMIT_PROCESSES);
		return 0;
	}
	if (lim->fork_interval_ns &&
	    !ng_gcra(&b->fork_tat_ns, bpf_ktime_get_ns(), lim->fork_interval_ns,
		     lim->fork_tolerance_ns))
		ng_limit_broken(pol, cgid, lim, b, NG_LIMIT_FORK_RATE);
	return 0;
}

/* The last thread of a process in a guarded pod exits: one live process less. */
TRACEPOINT_PROBE(sched, sched_process_exit)
{
	if (!args->group_dead)
		return 0;
	u64 cgid, gid;
	struct ng_cgroup_policy *pol = ng_current_policy_at(&cgid, &gid);
	if (!pol || !(pol->flags & NG_POLICY_LIMITS))
		return 0;
	struct ng_budget *b = budget.lookup(&gid);
	if (b && b->processes > 0)
		__sync_fetch_and_add(&b->processes, -1);
	return 0;
}

/* execsPerSecond: a second program on sched_process_exec (kept apart from the allowlist
 * check so each stays well inside the verifier's budget). */
int ng_exec_budget(void *ctx)
{
	u64 cgid, gid;
	struct ng_cgroup_policy *pol = ng_current_policy_at(&cgid, &gid);
	if (!pol || !(pol->flags & NG_POLICY_LIMITS))
		return 0;
	u32 pid = pol->policy_id;
	struct ng_limits *lim = policy_limits.lookup(&pid);
	if (!lim || !lim->exec_interval_ns)
		return 0;
	/* the runtime's own exec that began outside (see ng_exec_enter) is not the pod's */
	if (ng_exec_began_outside((u32)bpf_get_current_pid_tgid()))
		return 0;
	struct ng_budget *b = ng_budget_of(gid);
	if (!b)
		return 0;
	if (!ng_gcra(&b->exec_tat_ns, bpf_ktime_get_ns(), lim->exec_interval_ns,
		     lim->exec_tolerance_ns))
		ng_limit_broken(pol, cgid, lim, b, NG_LIMIT_EXEC_RATE);
	return 0;
}

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
	if (ng_exec_began_outside(args->old_pid)) {
		ng_count(NG_CNT_EXEC_BEGUN_OUTSIDE);
		return 0;
	}

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
	ng_agg_key_init(&ak, cgid, pol, NG_OP_EXEC);
	u64 h = ng_fnv1a64(k->path, len);
	__builtin_memcpy(ak.addr, &h, 8);

	u64 total, first;
	if (!ng_aggregate(&ak, now, &total, &first))
		return 0;
	struct ng_exec_event *e = ng_reserve(sizeof(struct ng_exec_event), total);
	if (!e)
		return 0;
	ng_fill_hdr(&e->hdr, NG_OP_EXEC, sizeof(*e), pol, cgid, now, total, first);
	e->old_pid = args->old_pid;
	e->path_len = len > 0 ? len : 0;
	bpf_probe_read_kernel(e->path, NG_PATH_MAX, k->path);
	ng_submit(e);
	return 0;
}


/* ----------------------------------------------------------------- sockets --- */

static __always_inline int ng_socket_rule_matches(struct ng_socket_rule *r, u32 type, u32 proto)
{
	if (!(r->types & (1u << (type & 0xf))))
		return 0;
	if (r->protocols == NG_SOCK_ALL)
		return 1;
	return proto < 32 && (r->protocols & (1u << proto));
}

static __always_inline void ng_socket_report(struct ng_cgroup_policy *pol, u64 cgid, u32 family,
					     u32 type, u32 proto, u32 hook)
{
	ng_count(NG_CNT_VIOLATIONS);
	u64 now = bpf_ktime_get_ns();
	struct ng_agg_key ak;
	ng_agg_key_init(&ak, cgid, pol, NG_OP_SOCKET);
	__builtin_memcpy(&ak.addr[0], &family, 4);
	__builtin_memcpy(&ak.addr[4], &type, 4);
	__builtin_memcpy(&ak.addr[8], &proto, 4);
	u64 total, first;
	if (!ng_aggregate(&ak, now, &total, &first))
		return;
	struct ng_socket_event *e = ng_reserve(sizeof(struct ng_socket_event), total);
	if (!e)
		return;
	ng_fill_hdr(&e->hdr, NG_OP_SOCKET, sizeof(*e), pol, cgid, now, total, first);
	if (hook == NG_SOCK_TRACEPOINT)
		e->hdr.verdict = NG_VERDICT_AUDITED;
	e->family = family;
	e->type = type;
	e->protocol = proto;
	e->hook = hook;
	ng_submit(e);
}

/* cgroup sock_create (AF_INET / AF_INET6 only: the kernel runs it from inet_create and
 * inet6_create). Returns 0 to fail socket() with EPERM. */
int ng_sock_create(struct bpf_sock *ctx)
{
	u64 cgid;
	struct ng_cgroup_policy *pol = ng_current_policy(&cgid);
	if (!pol || !(pol->flags & NG_POLICY_SOCKETS))
		return 1;
	struct ng_socket_key k = {};
	k.policy_id = pol->policy_id;
	k.family = ctx->family;
	struct ng_socket_rule *r = socket_deny.lookup(&k);
	u32 type = ctx->type, proto = ctx->protocol;
	if (!r || !ng_socket_rule_matches(r, type, proto))
		return 1;
	int audit = pol->flags & NG_POLICY_AUDIT;
	if (!audit)
		ng_count(NG_CNT_SOCKET_DENIED);
	ng_socket_report(pol, cgid, k.family, type & 0xf, proto, NG_SOCK_CGROUP);
	return audit ? 1 : 0;
}

/* Audit of other families: attached to syscalls:sys_enter_socket only while a loaded
 * policy audits a family the sock_create hook cannot see. (Enforce mode never gets here:
 * the seccomp filter answers those calls with EPERM.) */
struct ng_sys_enter_args {
	u64 common;      /* common_type, common_flags, common_preempt_count, common_pid */
	s32 nr;          /* __syscall_nr */
	u32 _pad;
	u64 args[6];
};

int ng_socket_audit(struct ng_sys_enter_args *ctx)
{
	u64 cgid;
	struct ng_cgroup_policy *pol = ng_current_policy(&cgid);
	if (!pol || !(pol->flags & NG_POLICY_SOCKETS) || !(pol->flags & NG_POLICY_AUDIT))
		return 0;
	u32 family = (u32)ctx->args[0];
	u32 type = (u32)ctx->args[1] & 0xf, proto = (u32)ctx->args[2];
	if (family == NG_AF_INET && type == NG_SOCK_PACKET)
		family = NG_AF_PACKET; /* the kernel makes it a packet socket */
	if (family == NG_AF_INET || family == NG_AF_INET6)
		return 0; /* the sock_create hook reports those */
	struct ng_socket_key k = {};
	k.policy_id = pol->policy_id;
	k.family = family;
	struct ng_socket_rule *r = socket_deny.lookup(&k);
	if (r && ng_socket_rule_matches(r, type, proto))
		ng_socket_report(pol, cgid, family, type, proto, NG_SOCK_TRACEPOINT);
	return 0;
}

/* ---------------------------------------------------------------- syscalls --- */

static __always_inline void ng_syscall_report(struct ng_cgroup_policy *pol, u64 cgid, u32 nr,
					      u32 arch, u32 mechanism)
{
	ng_count(NG_CNT_VIOLATIONS);
	u64 now = bpf_ktime_get_ns();
	struct ng_agg_key ak;
	ng_agg_key_init(&ak, cgid, pol, NG_OP_SYSCALL);
	__builtin_memcpy(&ak.addr[0], &nr, 4);
	__builtin_memcpy(&ak.addr[4], &arch, 4);
	u64 total, first;
	if (!ng_aggregate(&ak, now, &total, &first))
		return;
	struct ng_syscall_event *e = ng_reserve(sizeof(struct ng_syscall_event), total);
	if (!e)
		return;
	ng_fill_hdr(&e->hdr, NG_OP_SYSCALL, sizeof(*e), pol, cgid, now, total, first);
	e->hdr.verdict = mechanism == NG_SYSCALL_SECCOMP_KILL ? NG_VERDICT_BLOCKED :
								NG_VERDICT_AUDITED;
	e->nr = nr;
	e->arch = arch;
	e->mechanism = mechanism;
	e->_pad = 0;
	ng_submit(e);
}

/* signal_generate(int sig, struct kernel_siginfo *info, struct task_struct *task, int group,
 * int result): a seccomp kill is SIGSYS with si_code SYS_SECCOMP sent by the task to
 * itself. siginfo's layout is user ABI (siginfo_t): si_code at 8, and for SIGSYS
 * si_syscall at 24, si_arch at 28 on 64-bit. The filter already killed the caller before
 * the syscall ran; this only reports it. */
RAW_TRACEPOINT_PROBE(signal_generate)
{
	if ((int)ctx->args[0] != NG_SIGSYS)
		return 0;
	if (ctx->args[2] != bpf_get_current_task())
		return 0;
	void *info = (void *)ctx->args[1];
	s32 code = 0;
	bpf_probe_read_kernel(&code, sizeof(code), info + 8);
	if (code != NG_SYS_SECCOMP)
		return 0;
	u64 cgid;
	struct ng_cgroup_policy *pol = ng_current_policy(&cgid);
	if (!pol || !(pol->flags & NG_POLICY_SYSCALLS))
		return 0;
	u32 nr = 0, arch = 0;
	bpf_probe_read_kernel(&nr, sizeof(nr), info + 24);
	bpf_probe_read_kernel(&arch, sizeof(arch), info + 28);
	struct ng_syscall_key k = {};
	k.policy_id = pol->policy_id;
	k.nr = arch == NG_AUDIT_ARCH_I386 ? (nr | NG_SYSCALL_COMPAT) : nr;
	/* x32 calls are refused wholesale by the filter; anything else is another filter's */
	if (!(nr & NG_X32_SYSCALL_BIT) && !syscall_deny.lookup(&k))
		return 0;
	ng_count(NG_CNT_SYSCALL_KILLED);
	ng_syscall_report(pol, cgid, nr, arch, NG_SYSCALL_SECCOMP_KILL);
	return 0;
}

/* Audit action: attached to syscalls:sys_enter_<name> for each syscall some loaded policy
 * audits, and only while one does (every syscall tracepoint slows every syscall on the
 * node, see docs/performance.md). */
int ng_syscall_audit(struct ng_sys_enter_args *ctx)
{
	u64 cgid;
	struct ng_cgroup_policy *pol = ng_current_policy(&cgid);
	if (!pol || !(pol->flags & NG_POLICY_SYSCALLS))
		return 0;
	if (!(pol->flags & (NG_POLICY_AUDIT | NG_POLICY_SYSCALL_AUDIT)))
		return 0; /* kill action: the seccomp filter handles it */
	struct ng_syscall_key k = {};
	k.policy_id = pol->policy_id;
	k.nr = (u32)ctx->nr;
	if (!syscall_deny.lookup(&k))
		return 0;
	ng_syscall_report(pol, cgid, k.nr, NG_AUDIT_ARCH_NATIVE, NG_SYSCALL_TRACEPOINT);
	return 0;
}
