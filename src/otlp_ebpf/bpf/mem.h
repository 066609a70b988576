/* Types shared by mem.bpf.c and collectors/mem.py (mirrored with ctypes there and checked
 * against this object's BTF in tests). */
#ifndef OTLP_EBPF_MEM_H
#define OTLP_EBPF_MEM_H


enum mem_drop {
	MEM_DROP_TABLE_FULL = 0,    /* allocation table full: the block is not tracked */
	MEM_DROP_PENDING_FULL = 1,  /* no room for a call in flight: the block is not tracked */
	MEM_DROP_STACK = 2,         /* stack unreadable or stack table full: tracked without one */
	MEM_DROP_TOTALS_FULL = 3,   /* per-stack table full: tracked, shown as an unknown stack */
	MEM_DROP_FAULTS_FULL = 4,   /* page-fault table full: the fault is not counted */
	MEM_DROP_EXITS_FULL = 5,    /* exit event ring full: the process ran on unpaused */
	MEM_DROP_EVENTS_FULL = 6,   /* event ring full: a hold or a new Python stack not told */
	MEM_DROP_SLOTS = 8,
};

enum mem_counter {
	MEM_COUNT_ALLOCS = 0,       /* blocks tracked */
	MEM_COUNT_FREES = 1,        /* frees that matched a tracked block */
	MEM_COUNT_SLOTS = 2,
};

/* A live block: one per (process, address). Kernel mode uses tgid 0. */
struct alloc_key {
	__u64 addr;
	__u32 tgid;
	__u32 pad;
};

struct alloc_info {
	__u64 size;
	__u64 ts;         /* bpf_ktime_get_ns() at allocation (CLOCK_MONOTONIC) */
	__s64 stack_id;   /* key of `stacks`; negative: the stack could not be stored */
	__u64 weight_bytes; /* bytes it stands for in the totals: `size`, or its sampled weight */
	__u64 weight_count; /* blocks it stands for: 1, or its sampled weight */
};

/* Byte sampling under an overhead budget (the heap profilers' Poisson sampling): sample points
 * fall on the stream of allocated bytes with exponential gaps of mean `mean_gap` bytes; a block
 * holding k points is tracked and weighs k * mean_gap bytes (an unbiased estimate of its
 * bytes; a block of s bytes holds a point with probability 1 - exp(-s / mean_gap)), and
 * k * mean_gap / s blocks. `mean_gap` 0: every block is tracked (exact). The gaps are
 * `gap_q16[i] * scale >> 16` for a random i (a 256-point table of the exponential's quantiles,
 * user space sets both). */
#define MEM_GAP_SLOTS 256

struct mem_sampling {
	__u64 mean_gap;
	__u64 scale;
	__u32 gap_q16[MEM_GAP_SLOTS];
};

/* Outstanding bytes and blocks per (process, stack), kept in step with the live blocks. */
struct stack_key {
	__u32 tgid;
	__u32 pad;
	__s64 stack_id;
};

struct stack_total {
	__s64 bytes;
	__s64 count;
};

/* A call in flight on one thread, from the entry probe to the return probe. */
struct pending_call {
	__u64 size;
	__u64 ptr;        /* realloc: the old block; posix_memalign: where the result goes */
	__u64 sp;         /* stack pointer at entry: tells a nested call from a stale entry */
	__u32 kind;
	__u32 depth;      /* allocator calls nested inside this one (glibc realloc -> malloc) */
	/* alloc_session: whether the block is tracked, decided at the entry, and its weights */
	__u64 sampled;
	__u64 weight_bytes;
	__u64 weight_count;
};

/* What an `alloc_enter` probe is on: its attach cookie. */
enum alloc_function {
	FN_MALLOC = 0,          /* malloc(size), valloc(size), pvalloc(size) */
	FN_CALLOC = 1,          /* calloc(nmemb, size) */
	FN_REALLOC = 2,         /* realloc(ptr, size) */
	FN_REALLOCARRAY = 3,    /* reallocarray(ptr, nmemb, size) */
	FN_POSIX_MEMALIGN = 4,  /* posix_memalign(memptr, alignment, size) */
	FN_MEMALIGN = 5,        /* memalign(alignment, size), aligned_alloc(alignment, size) */
	FN_FREE = 6,            /* free(ptr) */
	FN_EXIT = 7,            /* exit(status) */
};

enum pending_kind {
	CALL_ALLOC = 0,
	CALL_REALLOC = 1,
	CALL_MEMALIGN_OUT = 2,
	CALL_MMAP = 3,
};

enum mem_event_kind {
	MEM_EVENT_EXIT = 0,     /* a target reached exit(), stopped: capture its maps, resume it */
	MEM_EVENT_PY_HOLD = 1,  /* a new image stopped at its first allocator call (python.h) */
	MEM_EVENT_PY_STACK = 2, /* a stack with Python frames stored for the first time */
	MEM_EVENT_NEW_PROCESS = 3, /* a target forked, the child stopped: probe it, resume it */
};

/* What the `events` ring buffer carries (user space continues every stopped target). */
struct mem_event {
	__u32 tgid;
	__u32 kind;
	__s64 stack_id; /* MEM_EVENT_PY_STACK */
};

#endif
