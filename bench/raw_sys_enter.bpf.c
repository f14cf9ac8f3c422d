/* SPDX-License-Identifier: Apache-2.0 */
/* The comparator of bench/sandbox_bench.py: the syscall deny list done the "obvious" way,
 * with one BPF program on raw_syscalls:sys_enter that sees every syscall of every task on
 * the node. Per syscall it does what nodeguard's hooks do to find a policy (the task's
 * cgroup id in a hash, else its ancestors at the levels that hold a guarded cgroup), then
 * looks the syscall number up in the policy's deny hash.
 *
 * On a hit it only counts (a real enforcer would bpf_send_signal(SIGKILL)): the benchmark
 * must never kill anything, and the loop it measures makes no denied call, so the cost is
 * the same. It ignores the i386 ABI (a real one would have to read the task's arch too:
 * more work per call, not less). bench/ loads it with BCC and attaches it by hand (the
 * function name has no raw_tracepoint__ prefix, so BCC does not attach it by itself). */
#include <uapi/linux/bpf.h>

#define RAW_MAX_LEVEL 32

struct raw_deny_key {
	u32 policy_id;
	u32 nr;
};

/* guarded cgroup id -> policy id */
BPF_HASH(raw_cgroup_policy, u64, u32, 4096);
/* [0] -> bitmask of cgroup levels that hold a guarded cgroup */
BPF_ARRAY(raw_levels, u64, 1);
/* (policy id, syscall number) -> 1 */
BPF_HASH(raw_deny, struct raw_deny_key, u32, 16384);
/* [0] denied calls seen */
BPF_PERCPU_ARRAY(raw_hits, u64, 1);

static __always_inline u32 *raw_policy(void)
{
	u64 id = bpf_get_current_cgroup_id();
	u32 *pol = raw_cgroup_policy.lookup(&id);
	if (pol)
		return pol;
	int zero = 0;
	u64 *levels = raw_levels.lookup(&zero);
	if (!levels || !*levels)
		return NULL;
	u64 mask = *levels;
	for (int level = 1; level < RAW_MAX_LEVEL; level++) {
		if (!(mask >> level))
			break;
		if (!(mask & (1ULL << level)))
			continue;
		u64 anc = bpf_get_current_ancestor_cgroup_id(level);
		if (!anc)
			break;
		pol = raw_cgroup_policy.lookup(&anc);
		if (pol)
			return pol;
	}
	return NULL;
}

/* raw_syscalls:sys_enter(struct pt_regs *regs, long id) */
int raw_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	u32 *pol = raw_policy();
	if (!pol)
		return 0;
	struct raw_deny_key k = {};
	k.policy_id = *pol;
	k.nr = (u32)ctx->args[1];
	if (!raw_deny.lookup(&k))
		return 0;
	int zero = 0;
	u64 *hit = raw_hits.lookup(&zero);
	if (hit)
		(*hit)++;
	return 0;
}
