/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Map declarations for bpf/guard.bpf.c, in two flavours chosen by the loader:
 *
 *  - NG_PIN_DIR undefined (`nodeguard run`): private maps, gone with the process.
 *  - NG_PIN_DIR defined (the node agent; a validated bpffs directory, passed as a string
 *    with -D): every map that holds state is pinned there, so enforcement, counts and
 *    undelivered records outlive the agent, and a restarted agent compiled with the same
 *    flags reuses the very same maps (BCC opens a pinned path instead of creating one).
 *
 * BCC recognises a map by the section "maps/<type>[:<pin path>]" of its declaration and
 * rewrites calls by the member names of the declared struct (lookup, ringbuf_reserve,
 * get_local_storage, ...). BCC has no pinned form of its ring buffer and cgroup storage
 * macros, so those two are declared here directly in that form.
 */
#ifndef NG_MAPS_H
#define NG_MAPS_H

#ifdef NG_PIN_DIR
#define NG_PIN_PATH(name) NG_PIN_DIR "/" #name
#define NG_HASH(name, key_t, val_t, n) \
	BPF_TABLE_PINNED("hash", key_t, val_t, name, n, NG_PIN_PATH(name))
#define NG_LRU_HASH(name, key_t, val_t, n) \
	BPF_TABLE_PINNED("lru_hash", key_t, val_t, name, n, NG_PIN_PATH(name))
#define NG_ARRAY(name, val_t, n) BPF_TABLE_PINNED("array", int, val_t, name, n, NG_PIN_PATH(name))
#define NG_PERCPU_ARRAY(name, val_t, n) \
	BPF_TABLE_PINNED("percpu_array", int, val_t, name, n, NG_PIN_PATH(name))
#define NG_LPM_TRIE(name, key_t, val_t, n) \
	BPF_TABLE_PINNED("lpm_trie", key_t, val_t, name, n, NG_PIN_PATH(name), BPF_F_NO_PREALLOC)
#define NG_SECTION(kind, name) "maps/" kind ":" NG_PIN_PATH(name)
#else
#define NG_HASH(name, key_t, val_t, n) BPF_HASH(name, key_t, val_t, n)
#define NG_LRU_HASH(name, key_t, val_t, n) BPF_TABLE("lru_hash", key_t, val_t, name, n)
#define NG_ARRAY(name, val_t, n) BPF_ARRAY(name, val_t, n)
#define NG_PERCPU_ARRAY(name, val_t, n) BPF_PERCPU_ARRAY(name, val_t, n)
#define NG_LPM_TRIE(name, key_t, val_t, n) BPF_LPM_TRIE(name, key_t, val_t, n)
#define NG_SECTION(kind, name) "maps/" kind
#endif

/* Ring buffer of `pages` pages; pinned with the rest in the agent flavour. */
#define NG_RINGBUF(name, pages)                                   \
	struct name##_table_t {                                   \
		int key;                                          \
		u32 leaf;                                         \
		int (*ringbuf_output)(void *, u64, u64);          \
		void *(*ringbuf_reserve)(u64);                    \
		void (*ringbuf_discard)(void *, u64);             \
		void (*ringbuf_submit)(void *, u64);              \
		u32 max_entries;                                  \
	};                                                        \
	__attribute__((section(NG_SECTION("ringbuf", name))))     \
	struct name##_table_t name = { .max_entries = (pages) * 4096 }

/* Cgroup-local storage keyed by struct bpf_cgroup_storage_key (per attach type). */
#define NG_CGROUP_STORAGE(name, val_t)                                 \
	struct name##_table_t {                                        \
		struct bpf_cgroup_storage_key key;                     \
		val_t leaf;                                            \
		val_t *(*lookup)(struct bpf_cgroup_storage_key *);     \
		int (*update)(struct bpf_cgroup_storage_key *, val_t *); \
		int (*get_local_storage)(u64);                         \
	};                                                             \
	__attribute__((section(NG_SECTION("cgroup_storage", name))))   \
	struct name##_table_t name = { 0 }

#endif /* NG_MAPS_H */
