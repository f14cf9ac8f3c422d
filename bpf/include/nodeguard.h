/* SPDX-License-Identifier: Apache-2.0 */
/*
 * nodeguard ABI: every struct and constant shared between the BPF programs and user
 * space. Mirrored field by field in nodeguard/bpf/abi.py; tests/unit/test_abi_layout.py
 * compiles this header and compares every size and offset with the ctypes mirror.
 *
 * Rules: fixed-width types only, explicit padding (no implicit holes), 8-byte aligned
 * sizes. Map keys are zeroed before use (padding bytes must not carry stack garbage).
 * Only UAPI types are used, so the header is independent of the kernel's internals.
 */
#ifndef NODEGUARD_H
#define NODEGUARD_H

#ifdef __BPF__
/* BCC compiles with the kernel's headers: __u8 ... __u64 come from linux/types.h. */
#include <linux/types.h>
#else
#include <linux/types.h>
#endif

#define NG_ABI_VERSION 1

/* Maximum exec path length checked in the kernel, including the NUL. Longer paths never
 * match an allow rule (fail closed). LPM trie data (policy id + path) is 252 <= 256. */
#define NG_PATH_MAX 248

/* Port ranges stored per egress prefix (after the compiler folded ancestor prefixes in). */
#define NG_MAX_PORT_RANGES 16

#define NG_COMM_LEN 16

/* ---- policy flags (struct ng_cgroup_policy.flags) ---- */
#define NG_POLICY_AUDIT        (1u << 0) /* report, never block */
#define NG_POLICY_EGRESS       (1u << 1) /* policy restricts egress (spec.egress present) */
#define NG_POLICY_EXEC         (1u << 2) /* policy restricts exec (spec.exec present) */
#define NG_POLICY_ACTIVE       (1u << 3) /* set in cgroup storage once user space wrote it */
#define NG_POLICY_SYSCALLS     (1u << 4) /* policy denies syscalls (spec.syscalls present) */
#define NG_POLICY_SYSCALL_AUDIT (1u << 5) /* spec.syscalls.action audit: report, never kill */
#define NG_POLICY_SOCKETS      (1u << 6) /* policy denies socket kinds (spec.sockets present) */
#define NG_POLICY_LIMITS       (1u << 7) /* policy sets process budgets (spec.limits present) */

/* ---- protocol bits (struct ng_port_range.protocols) ---- */
#define NG_PROTO_TCP (1u << 0)
#define NG_PROTO_UDP (1u << 1)
#define NG_PROTO_OTHER (1u << 2) /* any other IPPROTO (e.g. ICMP echo); ports ignored */

/* ---- exec rule kinds (struct ng_exec_rule.kind) ---- */
#define NG_EXEC_EXACT   1 /* key holds the whole path plus its NUL */
#define NG_EXEC_SEGMENT 2 /* "prefix*": the rest of the path has no '/' */
#define NG_EXEC_SUBTREE 3 /* "prefix**": anything below, but no "." / ".." / "//" tricks */

/* ---- event ops (struct ng_event_hdr.op) ---- */
#define NG_OP_EGRESS 1
#define NG_OP_EXEC   2
#define NG_OP_SYSCALL 3
#define NG_OP_SOCKET 4
#define NG_OP_LIMIT  5

/* ---- syscall violation mechanisms (struct ng_syscall_event.mechanism) ---- */
#define NG_SYSCALL_SECCOMP_KILL 1 /* the seccomp filter killed the caller before the call ran */
#define NG_SYSCALL_TRACEPOINT   2 /* seen at sys_enter (audit action): the call went ahead */

/* Bit or-ed into a syscall number for the 32-bit (i386) ABI of an x86_64 kernel. */
#define NG_SYSCALL_COMPAT (1u << 31)

/* ---- socket violation hooks (struct ng_socket_event.hook) ---- */
#define NG_SOCK_CGROUP         1 /* cgroup sock_create (AF_INET/AF_INET6): EPERM */
#define NG_SOCK_SECCOMP_NOTIFY 2 /* seccomp user notification answered EPERM (record made in
				  * user space, by the supervisor that holds the listener) */
#define NG_SOCK_TRACEPOINT     3 /* sys_enter_socket (audit): the socket was created */

/* ---- process budgets (struct ng_limit_event.limit) ---- */
#define NG_LIMIT_PROCESSES 1 /* live processes in the pod above maxProcesses */
#define NG_LIMIT_FORK_RATE 2 /* forksPerSecond (with its burst) exceeded */
#define NG_LIMIT_EXEC_RATE 3 /* execsPerSecond (with its burst) exceeded */

/* struct ng_socket_rule: a mask with every bit set matches every type / protocol. */
#define NG_SOCK_ALL 0xffffffffu

/* ---- egress hooks (struct ng_egress_event.hook) ---- */
#define NG_HOOK_CONNECT4 1
#define NG_HOOK_CONNECT6 2
#define NG_HOOK_SENDMSG4 3
#define NG_HOOK_SENDMSG6 4

/* ---- verdict (struct ng_event_hdr.verdict) ---- */
#define NG_VERDICT_BLOCKED 1 /* enforce mode: EPERM or SIGKILL */
#define NG_VERDICT_AUDITED 2 /* audit mode: let through, reported */

/* ---- counters (index into the per-CPU counters array) ---- */
#define NG_CNT_VIOLATIONS       0 /* every violating attempt */
#define NG_CNT_EVENTS_EMITTED   1 /* records written to the ring buffer */
#define NG_CNT_RINGBUF_FULL     2 /* records that could not be reserved (lost in kernel) */
#define NG_CNT_AGGREGATED       3 /* attempts folded into an aggregate (no record of their own) */
#define NG_CNT_AGG_TABLE_FULL   4 /* aggregate table full: record sent unaggregated */
#define NG_CNT_EXEC_KILLED      5
#define NG_CNT_EGRESS_DENIED    6
#define NG_CNT_PATH_TOO_LONG    7 /* exec path longer than NG_PATH_MAX (denied) */
#define NG_CNT_SYSCALL_KILLED   8 /* denied syscalls (seccomp kills seen in guarded cgroups) */
#define NG_CNT_SOCKET_DENIED    9 /* sockets refused by the cgroup sock_create hook */
#define NG_CNT_LIMIT_KILLED     10 /* processes killed for breaking a process budget */
#define NG_CNT_LOST_ATTEMPTS    11 /* attempts lost with their record: an unaggregated record
				    * (aggregate table full) the ring buffer had no room for */
#define NG_CNT_EXEC_BEGUN_OUTSIDE 12 /* execs let through because they began before their
				      * process was moved into a guarded cgroup (runc init's
				      * self-clone racing its move into the container) */
#define NG_CNT_MAX              13

/* An exec that began outside any guarded cgroup is judged by where it began only if it
 * reaches sched_process_exec within this time (runc's exec takes microseconds to
 * milliseconds; an old mark is ignored, never trusted). */
#define NG_EXEC_BEGUN_WINDOW_NS (2ULL * 1000000000ULL)
/* NG_EXEC_BEGUN_MAX (execs in flight node-wide that began outside any guarded cgroup) is
 * passed by the loader: at least 256 per possible CPU, so the LRU's per-CPU free lists
 * cannot evict fresh marks early (an evicted mark only means the exec is checked). */

/* cgroup id -> policy. Written by user space when it guards a cgroup. */
struct ng_cgroup_policy {
	__u32 policy_id;
	__u32 flags; /* NG_POLICY_* */
};

/* LPM trie key for egress allow rules. Every address is IPv6; IPv4 is stored and looked up
 * as IPv4-mapped (::ffff:a.b.c.d), so one trie serves both families.
 * prefixlen counts policy_id's 32 bits plus the address prefix bits. */
struct ng_egress_key {
	__u32 prefixlen;
	__u32 policy_id; /* always fully inside prefixlen, so its byte order does not matter */
	__u8 addr[16];
};

struct ng_port_range {
	__u16 lo;        /* host order, inclusive */
	__u16 hi;        /* host order, inclusive */
	__u8 protocols;  /* NG_PROTO_* */
	__u8 _pad[3];
};

/* LPM value: the ranges allowed for addresses under this prefix (already including the
 * ranges of every shorter prefix of the same policy that contains it). */
struct ng_port_set {
	__u32 count;
	__u32 _pad;
	struct ng_port_range ranges[NG_MAX_PORT_RANGES];
};

/* LPM trie key for exec allow rules. prefixlen counts policy_id's 32 bits plus 8 per byte
 * of path prefix. */
struct ng_exec_key {
	__u32 prefixlen;
	__u32 policy_id; /* always fully inside prefixlen */
	char path[NG_PATH_MAX];
};

struct ng_exec_rule {
	__u32 kind;         /* NG_EXEC_* */
	__u32 prefix_bytes; /* bytes of path covered by the key (the literal part) */
};

/* syscall_deny map key: (policy, syscall number [| NG_SYSCALL_COMPAT]). No padding. */
struct ng_syscall_key {
	__u32 policy_id;
	__u32 nr;
};

/* socket_deny map key: (policy, address family). No padding. */
struct ng_socket_key {
	__u32 policy_id;
	__u32 family;
};

/* socket_deny map value: a socket(family, type, protocol) is denied when bit (type & 0xf)
 * of types is set and bit protocol of protocols is set (protocols >= 32 match only
 * NG_SOCK_ALL). Types and protocols are independent: the compiler never emits a rule
 * that needs their cross product. */
struct ng_socket_rule {
	__u32 types;
	__u32 protocols;
};

/* policy_limits map value (key: policy id). Rates are kept as a generic cell rate
 * algorithm: one event per interval_ns, a burst of (tolerance_ns / interval_ns) + 1.
 * A zero max_processes / interval_ns means "no such budget". */
struct ng_limits {
	__u32 max_processes;
	__u32 fork_rate;      /* per second, for reports */
	__u32 fork_burst;
	__u32 exec_rate;      /* per second, for reports */
	__u32 exec_burst;
	__u32 _pad;
	__u64 fork_interval_ns;
	__u64 fork_tolerance_ns;
	__u64 exec_interval_ns;
	__u64 exec_tolerance_ns;
};

/* budget map value (key: the guarded cgroup id, i.e. the pod): live state of its budgets,
 * written by the programs; seeded and removed by user space. */
struct ng_budget {
	__s64 processes;     /* live processes (thread groups) in the pod */
	__u64 fork_tat_ns;   /* GCRA theoretical arrival time of the next fork */
	__u64 exec_tat_ns;   /* GCRA theoretical arrival time of the next exec */
	__u64 _pad;
};

/* Aggregation key: one violation "kind" per cgroup. Zeroed before filling. */
struct ng_agg_key {
	__u64 cgroup_id;
	__u32 policy_id;
	__u16 op;        /* NG_OP_* */
	__u16 port;      /* egress: destination port, host order */
	__u8 addr[16];   /* egress: destination (v4-mapped for IPv4); exec: path hash in [0..8);
			  * syscall: number in [0..4), arch in [4..8); socket: family, type,
			  * protocol as u32 in [0..12); limit: kind in [0..4) */
	__u8 protocol;   /* egress: IPPROTO_TCP / IPPROTO_UDP */
	__u8 family;     /* egress: AF_INET / AF_INET6 as seen by the caller */
	__u8 _pad[6];
};

struct ng_agg_value {
	__u64 count;        /* cumulative attempts, only ever incremented */
	__u64 first_ns;     /* CLOCK_MONOTONIC of the first attempt */
	__u64 last_ns;      /* CLOCK_MONOTONIC of the latest attempt */
	__u64 last_emit_ns; /* when a record was last written for this key */
};

/* Common header of every ring buffer record. Decoders switch on op and trust size. */
struct ng_event_hdr {
	__u16 op;          /* NG_OP_* */
	__u16 size;        /* whole record, header included */
	__u32 policy_id;
	__u64 ts_ns;       /* CLOCK_MONOTONIC */
	__u64 cgroup_id;   /* the task's own cgroup */
	__u32 pid;         /* thread group id (the "process id") */
	__u32 tid;
	__u32 verdict;     /* NG_VERDICT_* */
	__u32 _pad;
	__u64 count_total; /* cumulative attempts of this aggregate (0 = not aggregated) */
	__u64 first_ns;    /* first attempt of this aggregate */
	char comm[NG_COMM_LEN];
};

struct ng_egress_event {
	struct ng_event_hdr hdr;
	__u8 addr[16];   /* v4-mapped for IPv4 */
	__u16 port;      /* host order */
	__u8 protocol;   /* IPPROTO_* */
	__u8 family;     /* AF_INET / AF_INET6 as used by the caller */
	__u8 hook;       /* NG_HOOK_* */
	__u8 _pad[3];
};

struct ng_exec_event {
	struct ng_event_hdr hdr;
	__u32 old_pid;   /* pid before exec (differs when a non-leader thread execs) */
	__u32 path_len;  /* bytes read including NUL; NG_PATH_MAX if truncated */
	char path[NG_PATH_MAX];
};

/* A denied syscall. */
struct ng_syscall_event {
	struct ng_event_hdr hdr;
	__u32 nr;        /* syscall number in the caller's ABI (without NG_SYSCALL_COMPAT) */
	__u32 arch;      /* AUDIT_ARCH_* of the call (x86_64 0xc000003e, i386 0x40000003...) */
	__u32 mechanism; /* NG_SYSCALL_* */
	__u32 _pad;
};

/* A denied socket kind. */
struct ng_socket_event {
	struct ng_event_hdr hdr;
	__u32 family;    /* AF_* */
	__u32 type;      /* SOCK_* without SOCK_NONBLOCK / SOCK_CLOEXEC */
	__u32 protocol;
	__u32 hook;      /* NG_SOCK_* */
};

/* A broken process budget. */
struct ng_limit_event {
	struct ng_event_hdr hdr;
	__u32 limit;     /* NG_LIMIT_* */
	__u32 budget;    /* maxProcesses, or the rate per second */
	__u32 burst;     /* rate budgets: the burst */
	__u32 _pad;
	__s64 observed;  /* live processes in the pod when it was broken (all kinds) */
};

#endif /* NODEGUARD_H */
