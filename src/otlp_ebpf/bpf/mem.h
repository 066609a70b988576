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

/* A target that reached exit(): user space captures its memory maps, then resumes it. */
struct exit_event {
	__u32 tgid;
	__u32 pad;
};

#endif
