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
#define NG_CNT_MAX              8

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

/* Aggregation key: one violation "kind" per cgroup. Zeroed before filling. */
struct ng_agg_key {
	__u64 cgroup_id;
	__u32 policy_id;
	__u16 op;        /* NG_OP_* */
	__u16 port;      /* egress: destination port, host order */
	__u8 addr[16];   /* egress: destination (v4-mapped for IPv4); exec: path hash in [0..8) */
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

#endif /* NODEGUARD_H */
