/* Outstanding memory by stack, kept in the kernel: every live block in `allocs`
 * ((process, address) -> size, time, stack id) and running totals per (process, stack) in
 * `totals`. Nothing crosses to user space per allocation; the maps are read at the end.
 *
 * User mode: uprobes on the C allocator's entry points remember the request size per thread;
 * the return probe records the block and its stack. The stack is taken at the return because
 * there the instruction pointer is inside the caller and rbp is the caller's frame, while at
 * the entry of a frame-pointer-less malloc the immediate caller is unreachable. Allocator calls
 * made inside another one (glibc realloc(NULL, n) -> malloc) are counted once, by the outer.
 * Kernel mode: kmem tracepoints with kernel stacks. */
#include "core.h"
#include "target.h"
#include "counters.h"
#include "mem.h"
#include "stack_store.h"
#include "python.h"

char LICENSE[] SEC("license") = "GPL";

#define SIGSTOP 19
#define MAP_PRIVATE 0x02
#define MAP_FIXED 0x10
#define MAP_ANONYMOUS 0x20
#define MAX_ERRNO 4095

/* Function arguments and return value at a uprobe (the C calling convention). */
#if defined(__TARGET_ARCH_x86)
#define ARG1(regs) ((regs)->di)
#define ARG2(regs) ((regs)->si)
#define ARG3(regs) ((regs)->dx)
#define RET(regs) ((regs)->ax)
#elif defined(__TARGET_ARCH_arm64)
#define ARG1(regs) ((regs)->regs[0])
#define ARG2(regs) ((regs)->regs[1])
#define ARG3(regs) ((regs)->regs[2])
#define RET(regs) ((regs)->regs[0])
#endif

/* Pause a target at exit() so user space can read its memory maps before they vanish. */
const volatile u32 stop_at_exit = 0;
const volatile s64 nr_mmap = 9;
const volatile s64 nr_munmap = 11;
/* Walk the frames of registered CPython processes (python.h) at user stacks; 0 with
 * --no-python. */
const volatile u32 python_frames = 1;
/* Under a budget with uprobe sessions (alloc_session): see session_enter and hold_new_process. */
const volatile u32 session = 0;
const volatile u32 hold_new_processes = 0;
#define PROT_NONE 0x0
#define MIGHT_MAP 4096 /* a request this large may be served by its own mmap */

struct trace_event_raw_kmalloc {
	struct trace_entry ent;
	unsigned long call_site;
	const void *ptr;
	unsigned long bytes_req;
	unsigned long bytes_alloc;
} __attribute__((preserve_access_index));

struct trace_event_raw_kmem_cache_alloc {
	struct trace_entry ent;
	unsigned long call_site;
	const void *ptr;
	unsigned long bytes_req;
	unsigned long bytes_alloc;
} __attribute__((preserve_access_index));

struct trace_event_raw_kfree {
	struct trace_entry ent;
	unsigned long call_site;
	const void *ptr;
} __attribute__((preserve_access_index));

struct trace_event_raw_kmem_cache_free {
	struct trace_entry ent;
	unsigned long call_site;
	const void *ptr;
} __attribute__((preserve_access_index));

struct trace_event_raw_x86_exceptions {
	struct trace_entry ent;
	unsigned long address;
	unsigned long ip;
	unsigned long error_code;
} __attribute__((preserve_access_index));

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct alloc_key);
	__type(value, struct alloc_info);
} allocs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct stack_key);
	__type(value, struct stack_total);
} totals SEC(".maps");

/* Every stack once (stack_store.h): a leak is never lost to a stack-map collision. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, s64);
	__type(value, struct stored_stack);
} stacks SEC(".maps");

/* Where a stack is read before it is known whether it is new. Per thread for user stacks
 * (uprobe programs can be preempted, so a per-CPU buffer could be overwritten midway); per
 * CPU for the kmem tracepoints of kernel mode, which run with preemption off and never nest. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct stored_stack);
} user_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct stored_stack);
} kernel_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, u64);
	__type(value, struct pending_call);
} pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, u64);
	__type(value, struct pending_call);
} pending_mmap SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct stack_key);
	__type(value, u64);
} faults SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, u32);
	__type(value, char[TASK_COMM_LEN]);
} comms SEC(".maps");

/* Exits, holds and new Python stacks (struct mem_event): a program starting up stores many
 * new Python stacks at once (imports). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

/* Where a thread's Python frames are read before they join its native stack. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct py_stack);
} py_scratch SEC(".maps");

COUNTER_ARRAY(drops, MEM_DROP_SLOTS);

COUNTER_ARRAY(counters, MEM_COUNT_SLOTS);

/* Changed at run time by an overhead budget (an array, not .rodata, frozen at load). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct mem_sampling);
} sampling SEC(".maps");

/* Bytes left to the next sample point, per CPU (the points fall on the byte stream of all the
 * targets' allocations on that CPU: memoryless gaps make any interleaving fair). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, s64);
} bytes_to_sample SEC(".maps");

/* bump() by `n` (per-CPU slots: no atomics needed). */
static __always_inline void add_to(void *array, u32 slot, u64 n)
{
	u64 *v = bpf_map_lookup_elem(array, &slot);

	if (v)
		*v += n;
}

#define MEM_MAX_POINTS 32 /* points counted one by one in a block; beyond, by division */

static __always_inline u64 next_gap(struct mem_sampling *s)
{
	u32 i = bpf_get_prandom_u32() & (MEM_GAP_SLOTS - 1);

	return ((u64)s->gap_q16[i] * s->scale >> 16) + 1;
}

/* Whether a block of `size` bytes is tracked, and what it weighs (unbiased estimates). */
static __always_inline bool sample_block(u64 size, u64 *bytes, u64 *count)
{
	u32 zero = 0;
	struct mem_sampling *s = bpf_map_lookup_elem(&sampling, &zero);
	s64 *left;
	u64 points = 1, over, gap, weight, rest;

	*bytes = size;
	*count = 1;
	if (!s || !s->mean_gap)
		return true;
	left = bpf_map_lookup_elem(&bytes_to_sample, &zero);
	if (!left || !size)
		return false;
	if ((s64)size < *left) {
		*left -= size;
		return false;
	}
	over = size - (*left > 0 ? *left : 0); /* bytes of the block past its first point */
	gap = next_gap(s);
	for (int i = 0; i < MEM_MAX_POINTS && over >= gap; i++) {
		over -= gap;
		points++;
		gap = next_gap(s);
	}
	if (over >= gap) { /* a block of many gaps: the rest by their mean */
		points += over / s->mean_gap;
		over %= s->mean_gap;
		if (over >= gap)
			over = 0;
	}
	*left = gap - over;
	/* A block at least as long as the longest gap (the table's first) always holds a point:
	 * it is tracked with certainty, so its own size is its unbiased weight, exact. */
	if (size >= ((u64)s->gap_q16[0] * s->scale >> 16) + 1)
		return true;
	weight = points * s->mean_gap;
	*bytes = weight;
	/* weight / size blocks, rounded up or down at random so that the mean is exact */
	*count = weight / size;
	rest = weight % size;
	if ((u64)bpf_get_prandom_u32() * size < rest << 32)
		*count += 1;
	return true;
}

static __always_inline void remember_comm(u32 tgid)
{
	char comm[TASK_COMM_LEN];

	if (!tgid || bpf_map_lookup_elem(&comms, &tgid))
		return;
	bpf_get_current_comm(comm, sizeof(comm));
	bpf_map_update_elem(&comms, &tgid, comm, BPF_NOEXIST);
}

static __always_inline void account(u32 tgid, s64 stack_id, s64 bytes, s64 count)
{
	struct stack_key key = { .tgid = tgid, .pad = 0, .stack_id = stack_id };
	struct stack_total *total = bpf_map_lookup_elem(&totals, &key);

	if (!total) {
		struct stack_total zero = {};

		if (count < 0)
			return; /* its allocation was never counted here (table full) */
		bpf_map_update_elem(&totals, &key, &zero, BPF_NOEXIST);
		total = bpf_map_lookup_elem(&totals, &key);
		if (!total) {
			bump(&drops, MEM_DROP_TOTALS_FULL);
			return;
		}
		remember_comm(tgid);
	}
	__sync_fetch_and_add(&total->bytes, bytes);
	__sync_fetch_and_add(&total->count, count);
}

/* Under sessions, how many tracked blocks of any process hash to each slot, by address: a free
 * (nearly every one, under sampling) whose slot holds none cannot end a tracked block and is
 * done without the table's lookup (hashing a 16-byte key and walking a bucket: about half the
 * program's run). A slot is counted before its block enters the table and uncounted after it
 * leaves, so it never reads 0 while one of its blocks is tracked; a block of another process
 * at the same address only costs the lookup. Exact runs (no sessions) keep the lookup alone. */
#define MEM_FILTER_SLOTS (1 << 16)

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MEM_FILTER_SLOTS);
	__type(key, u32);
	__type(value, u32);
} tracked_slots SEC(".maps");

static __always_inline u32 *tracked_slot(u64 addr)
{
	/* Fibonacci hashing: the blocks' addresses differ in their middle bits */
	u32 slot = (addr * 0x9E3779B97F4A7C15ULL) >> (64 - 16);

	return bpf_map_lookup_elem(&tracked_slots, &slot);
}

static __always_inline void count_slot(u64 addr, s32 n)
{
	u32 *slot;

	if (!session)
		return;
	slot = tracked_slot(addr);
	if (slot)
		__sync_fetch_and_add(slot, n);
}

/* Whether a block at `addr` may be tracked (always, without sessions). */
static __always_inline bool maybe_tracked(u64 addr)
{
	u32 *slot;

	if (!session)
		return true;
	slot = tracked_slot(addr);
	return !slot || *slot;
}

static __always_inline void forget_block(u32 tgid, u64 addr)
{
	struct alloc_key key;
	struct alloc_info *info;
	s64 stack_id;
	u64 size, count;

	if (!maybe_tracked(addr))
		return;
	__builtin_memset(&key, 0, sizeof(key));
	key.addr = addr;
	key.tgid = tgid;
	info = bpf_map_lookup_elem(&allocs, &key);
	if (!info)
		return; /* allocated before we attached, or never tracked */
	stack_id = info->stack_id;
	size = info->weight_bytes;
	count = info->weight_count;
	if (bpf_map_delete_elem(&allocs, &key) == 0) {
		count_slot(addr, -1);
		account(tgid, stack_id, -(s64)size, -(s64)count);
		add_to(&counters, MEM_COUNT_FREES, count);
	}
}

static __always_inline struct stored_stack *scratch_for(u64 flags)
{
	u32 zero = 0;

	if (flags & BPF_F_USER_STACK)
		return bpf_task_storage_get(&user_scratch, bpf_get_current_task_btf(), 0,
					    BPF_LOCAL_STORAGE_GET_F_CREATE);
	return bpf_map_lookup_elem(&kernel_scratch, &zero);
}

static __always_inline bool send_event(u32 tgid, u32 kind, s64 stack_id)
{
	struct mem_event *event = bpf_ringbuf_reserve(&events, sizeof(*event), 0);

	if (!event) {
		bump(&drops, MEM_DROP_EVENTS_FULL);
		return false;
	}
	event->tgid = tgid;
	event->kind = kind;
	event->stack_id = stack_id;
	bpf_ringbuf_submit(event, 0);
	return true;
}

/* Append the current thread's Python frames (a registered CPython's) to the native user stack
 * in `s`, after a PY_NATIVE_END word; the root side of either is cut to fit. Returns whether
 * any was appended. */
static __always_inline bool append_python(struct stored_stack *s, u64 pid_tgid)
{
	u32 tgid = pid_tgid >> 32;
	struct py_stack *py;
	u32 nr = s->nr, n, i;
	bool cut = false;

	if (!python_frames || !bpf_map_lookup_elem(&py_procs, &tgid))
		return false;
	py = bpf_task_storage_get(&py_scratch, bpf_get_current_task_btf(), 0,
				  BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!py)
		return false;
	py_read_stack(tgid, (u32)pid_tgid, py);
	if (!py->nr)
		return false;
	if (nr > STORED_STACK_DEPTH - 2)
		nr = STORED_STACK_DEPTH - 2;
	s->ips[nr] = PY_NATIVE_END;
	n = nr + 1;
	for (i = 0; i < PY_MAX_FRAMES; i++) {
		u32 at = n;

		if (i >= py->nr)
			break;
		/* An index checked at each step: the compiler would otherwise walk a pointer
		 * whose bound the verifier cannot follow. */
		asm volatile("" : "+r"(at));
		if (at >= STORED_STACK_DEPTH - 1) {
			cut = true; /* the last slot is kept for the mark */
			break;
		}
		s->ips[at] = py->frames[i & (PY_MAX_FRAMES - 1)];
		n = at + 1;
	}
	if (cut || (py->flags & PY_STACK_TRUNCATED)) {
		/* A bound the verifier sees (the compiler's own proof of it does not carry over). */
		asm volatile("" : "+r"(n));
		if (n < STORED_STACK_DEPTH)
			s->ips[n++] = PY_FRAME_TRUNCATED_MARK;
	}
	s->nr = n;
	return true;
}

/* Store the user stack read into `s`, with the thread's Python frames; a new stack with
 * Python frames is announced, so user space names its code objects while the process lives. */
static __always_inline s64 store_user_stack(struct stored_stack *s)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	bool known;
	s64 id;

	if (!append_python(s, pid_tgid))
		return store_read_stack(&stacks, s);
	id = stored_stack_hash(s);
	known = bpf_map_lookup_elem(&stacks, &id) != NULL;
	id = store_read_stack(&stacks, s);
	if (id >= 0 && !known)
		send_event(pid_tgid >> 32, MEM_EVENT_PY_STACK, id);
	return id;
}

/* The id of the current stack, negative when it cannot be read or stored (the caller
 * counts it). */
static __always_inline s64 stack_id_of(void *ctx, u64 flags)
{
	struct stored_stack *scratch = scratch_for(flags);

	if (!scratch)
		return STACK_NOT_STORED;
	if (!(flags & BPF_F_USER_STACK))
		return store_stack(ctx, &stacks, scratch, flags);
	if (read_stack(ctx, scratch, flags) < 0)
		return STACK_NONE;
	return store_user_stack(scratch);
}

#if defined(__TARGET_ARCH_x86)
/* The return address on top of the user stack at a system call, if the bytes before it are a
 * call instruction: the caller of a wrapper that keeps no frame (glibc's mmap), which a
 * frame-pointer walk skips, as that caller's frame pointer leads to its own caller. */
static __always_inline u64 wrapper_caller(void)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	u64 sp = BPF_CORE_READ(regs, sp);
	u64 ret = 0;
	u8 call[6];

	if (!sp || bpf_probe_read_user(&ret, sizeof(ret), (void *)sp) || ret < sizeof(call))
		return 0;
	/* A wrapper that saved something there would leave a stack address or data, not code:
	 * a word pointing into the stack is not taken, whatever bytes precede it. */
	if (ret >= sp && ret - sp < (8 << 20))
		return 0;
	if (bpf_probe_read_user(call, sizeof(call), (void *)(ret - sizeof(call))))
		return 0;
	/* call rel32 (e8 + 4 bytes: through the PLT), call *disp32(%rip) (ff 15 + 4: -fno-plt) */
	if (call[1] == 0xe8 || (call[0] == 0xff && call[1] == 0x15))
		return ret;
	return 0;
}
#else
static __always_inline u64 wrapper_caller(void)
{
	return 0; /* arm64 would read lr; not done yet */
}
#endif

/* The stack of a system call made by the program, its wrapper's caller put back in. */
static __always_inline s64 syscall_stack_id(void *ctx)
{
	struct stored_stack *s = scratch_for(BPF_F_USER_STACK);
	u64 caller = wrapper_caller();
	u32 nr;

	if (!s || read_stack(ctx, s, BPF_F_USER_STACK) < 0)
		return STACK_NONE;
	nr = s->nr;
	if (caller && (nr < 2 || s->ips[1] != caller)) {
		for (u32 i = STORED_STACK_DEPTH - 1; i > 1; i--) {
			if (i <= nr)
				s->ips[i] = s->ips[i - 1];
		}
		s->ips[1] = caller;
		if (nr < STORED_STACK_DEPTH)
			s->nr = nr + 1;
	}
	return store_user_stack(s);
}

/* `bytes` and `count`: what the block stands for (sample_block). */
static __always_inline void remember_block(u32 tgid, u64 addr, u64 size, s64 stack_id, u64 bytes,
					   u64 count)
{
	struct alloc_key key;
	struct alloc_info info = {};

	if (stack_id < 0)
		bump(&drops, MEM_DROP_STACK);
	/* The address is live again: a free we never saw (a path not probed) ends the old one. */
	forget_block(tgid, addr);
	__builtin_memset(&key, 0, sizeof(key));
	key.addr = addr;
	key.tgid = tgid;
	info.size = size;
	info.ts = bpf_ktime_get_ns();
	info.stack_id = stack_id;
	info.weight_bytes = bytes;
	info.weight_count = count;
	count_slot(addr, 1);
	if (bpf_map_update_elem(&allocs, &key, &info, BPF_NOEXIST)) {
		count_slot(addr, -1);
		bump(&drops, MEM_DROP_TABLE_FULL);
		return;
	}
	account(tgid, stack_id, bytes, count);
	add_to(&counters, MEM_COUNT_ALLOCS, count);
}

/* A new block: tracked when sampled (always without a budget), with the stack only then;
 * otherwise only an older block at its address ends. */
#define TRACK_BLOCK(tgid, addr, size, stack_expr)                                          \
	do {                                                                               \
		u64 w_bytes, w_count;                                                      \
		if (sample_block((size), &w_bytes, &w_count))                              \
			remember_block((tgid), (addr), (size), (stack_expr), w_bytes, w_count); \
		else                                                                       \
			forget_block((tgid), (addr));                                      \
	} while (0)

static __always_inline int enter_call(u64 sp, u64 size, u64 ptr, u32 kind)
{
	u64 id = bpf_get_current_pid_tgid();
	struct pending_call call = { .size = size, .ptr = ptr, .sp = sp, .kind = kind, .depth = 0 };
	struct pending_call *outer;

	if (!target_wanted(id))
		return 0;
	outer = bpf_map_lookup_elem(&pending, &id);
	/* A call made deeper in the stack runs inside the outer one. At the same depth it is a
	 * tail call (glibc realloc(NULL, n) jumps to malloc): the callee's arguments describe the
	 * same block, so it replaces the outer entry, and of the two chained return probes the
	 * first records the block and the second finds nothing. Higher up, the outer call's
	 * return was never seen (a longjmp out of the allocator): that entry is stale and is
	 * replaced, or the thread's later calls would all be taken for nested ones. (A stale
	 * entry still swallows calls made deeper than it until the thread calls at its depth or
	 * above; entries are never left by the attach: targets count once both probes are live,
	 * and exec and thread exit clear them.) */
	if (outer && sp < outer->sp) {
		outer->depth += 1;
		return 0;
	}
	if (bpf_map_update_elem(&pending, &id, &call, BPF_ANY))
		bump(&drops, MEM_DROP_PENDING_FULL);
	return 0;
}

static __always_inline int free_call(u64 ptr)
{
	u64 id;

	if (!ptr)
		return 0;
	id = bpf_get_current_pid_tgid();
	if (!target_wanted(id))
		return 0;
	forget_block(id >> 32, ptr);
	return 0;
}

static __always_inline int exit_call(void)
{
	u64 id = bpf_get_current_pid_tgid();
	struct mem_event *event;

	if (!stop_at_exit || !target_wanted(id))
		return 0;
	/* Stop only a process user space will hear about (the event is reserved first), and
	 * queue the stop before the event is visible: a SIGCONT sent on reading it then cancels
	 * the stop even if it is still pending. */
	event = bpf_ringbuf_reserve(&events, sizeof(*event), 0);
	if (!event) {
		bump(&drops, MEM_DROP_EXITS_FULL);
		return 0;
	}
	bpf_send_signal(SIGSTOP);
	event->tgid = id >> 32;
	event->kind = MEM_EVENT_EXIT;
	event->stack_id = 0;
	bpf_ringbuf_submit(event, 0);
	return 0;
}

/* A new image's first allocator call: held until its interpreter is known (python.h). */
static __always_inline void hold_py(u64 id)
{
	hold_if_undecided(&events, sizeof(struct mem_event), MEM_EVENT_PY_HOLD, id >> 32, &drops,
			  MEM_DROP_EVENTS_FULL);
}

/* An argument register, read in the case that uses it (the short path reads no other): the
 * empty asm keeps the compiler from merging the loads of different cases into one load at a
 * computed offset of the context, which the verifier rejects ("modified ctx ptr"). */
static __always_inline u64 arg_value(u64 v)
{
	asm volatile("" : "+r"(v));
	return v;
}

/* The bytes an allocating call asks for, from its arguments (the attach cookie names the
 * function): for the short path and for describe_call alike. */
static __always_inline u64 requested_size(struct pt_regs *ctx, u64 cookie)
{
	switch (cookie) {
	case FN_CALLOC: /* calloc(nmemb, size) */
		return arg_value(ARG1(ctx)) * arg_value(ARG2(ctx));
	case FN_REALLOC: /* realloc(ptr, size) */
	case FN_MEMALIGN: /* memalign(alignment, size), aligned_alloc(alignment, size) */
		return arg_value(ARG2(ctx));
	case FN_REALLOCARRAY: /* reallocarray(ptr, nmemb, size) */
		return arg_value(ARG2(ctx)) * arg_value(ARG3(ctx));
	case FN_POSIX_MEMALIGN: /* posix_memalign(memptr, alignment, size) */
		return arg_value(ARG3(ctx));
	default: /* FN_MALLOC: malloc(size), valloc(size), pvalloc(size) */
		return arg_value(ARG1(ctx));
	}
}

/* What an allocating call asks for, from its arguments: the size, the block it resizes
 * (realloc) or where it writes its result (posix_memalign), and so how its return reads. */
static __always_inline void describe_call(struct pt_regs *ctx, u64 cookie,
					  struct pending_call *call)
{
	call->size = requested_size(ctx, cookie);
	switch (cookie) {
	case FN_REALLOC:
	case FN_REALLOCARRAY:
		call->ptr = ARG1(ctx);
		call->kind = CALL_REALLOC;
		break;
	case FN_POSIX_MEMALIGN:
		call->ptr = ARG1(ctx);
		call->kind = CALL_MEMALIGN_OUT;
		break;
	}
}

/* The one entry probe of every allocator function; the attach cookie says which. */
SEC("uprobe")
int alloc_enter(struct pt_regs *ctx)
{
	u64 cookie = bpf_get_attach_cookie(ctx);
	u64 id = bpf_get_current_pid_tgid();
	struct pending_call call = {};

	if (python_hold && target_wanted(id))
		hold_py(id);
	if (cookie == FN_FREE)
		return free_call(ARG1(ctx));
	if (cookie == FN_EXIT)
		return exit_call();
	describe_call(ctx, cookie, &call);
	return enter_call(PT_REGS_SP(ctx), call.size, call.ptr, call.kind);
}

/* The one return probe of every allocating function. */
/* The block a finished call handed out (0: none); the block a realloc moved or freed is
 * forgotten here (a failed realloc leaves it alive). */
static __always_inline u64 returned_block(struct pt_regs *ctx, u32 tgid,
					  const struct pending_call *call)
{
	u64 addr = RET(ctx);

	if (call->kind == CALL_MEMALIGN_OUT) {
		if ((int)addr != 0 || bpf_probe_read_user(&addr, sizeof(addr), (void *)call->ptr))
			return 0;
	}
	if (call->kind == CALL_REALLOC && call->ptr && (addr || !call->size))
		forget_block(tgid, call->ptr);
	return addr;
}

SEC("uretprobe")
int alloc_return(struct pt_regs *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32;
	struct pending_call *p = bpf_map_lookup_elem(&pending, &id);
	struct pending_call call;
	u64 addr;

	if (!p)
		return 0; /* not a target, or the call began before we attached */
	if (p->depth) {
		p->depth -= 1;
		return 0;
	}
	call = *p;
	bpf_map_delete_elem(&pending, &id);
	addr = returned_block(ctx, tgid, &call);
	if (!addr)
		return 0;
	TRACK_BLOCK(tgid, addr, call.size, stack_id_of(ctx, BPF_F_USER_STACK));
	return 0;
}

/* Under a budget, where the kernel has uprobe sessions (6.13+): one program runs at the entry
 * and at the return of each allocating function, and the entry decides whether the return runs
 * at all (returning 1 skips it). Blocks are sampled by bytes at the entry, where the size is
 * known: an unsampled block costs one trap and the draw, not the return probe's trap and
 * bookkeeping too. The draw comes before anything else (no map of targets is read for it):
 * the sample points fall on every probed process's byte stream, and the gaps being memoryless,
 * bytes of other processes (or of a call nested in another) passing by only shift them. */
extern bool bpf_session_is_return(void) __ksym __weak;

/* The calls the short path may take: realloc and reallocarray always return (session_enter). */
static __always_inline bool may_pass_unsampled(u64 cookie)
{
	switch (cookie) {
	case FN_MALLOC:
	case FN_CALLOC:
	case FN_MEMALIGN:
	case FN_POSIX_MEMALIGN:
		return true;
	default:
		return false;
	}
}

/* The path nearly every call takes under sampling: a small request (not a realloc) short of
 * the next sample point only moves the countdown; nothing else is read or written (the
 * general path below decides the same, after filling in the whole call). */
static __always_inline bool passes_unsampled(struct pt_regs *ctx)
{
	u64 cookie = bpf_get_attach_cookie(ctx);
	u32 zero = 0;
	struct mem_sampling *s;
	s64 *left;
	u64 size;

	if (!may_pass_unsampled(cookie))
		return false;
	size = requested_size(ctx, cookie);
	if (!size || size >= MIGHT_MAP)
		return false;
	s = bpf_map_lookup_elem(&sampling, &zero);
	left = bpf_map_lookup_elem(&bytes_to_sample, &zero);
	if (!s || !s->mean_gap || !left || (s64)size >= *left)
		return false;
	*left -= size;
	return true;
}

static __always_inline int session_enter(struct pt_regs *ctx)
{
	struct pending_call call = { .sp = PT_REGS_SP(ctx) };
	struct pending_call *outer;
	u64 id;

	if (passes_unsampled(ctx))
		return 1;
	/* The cookie is read again rather than kept from the short path, where keeping it took a
	 * register across the map lookups: two or three more instructions on every call. */
	describe_call(ctx, bpf_get_attach_cookie(ctx), &call);
	call.sampled = sample_block(call.size, &call.weight_bytes, &call.weight_count);
	/* realloc always returns: it may end a tracked block, and a tail call it makes (glibc
	 * realloc(NULL, n) -> malloc) must find it in flight, not draw for the block again. A
	 * large request too: the mmap serving it must be seen as the allocator's (on_mmap_enter),
	 * not as one the program made. */
	if (!call.sampled && call.kind != CALL_REALLOC && call.size < MIGHT_MAP)
		return 1;
	id = bpf_get_current_pid_tgid();
	if (!target_wanted(id))
		return 1;
	if (python_hold)
		hold_py(id);
	outer = bpf_map_lookup_elem(&pending, &id);
	/* Nested in a call in flight (deeper) or its tail call (same depth): that call decides
	 * for the block. Higher up, the entry in flight is stale (a longjmp): replaced. */
	if (outer && call.sp <= outer->sp)
		return 1;
	if (bpf_map_update_elem(&pending, &id, &call, BPF_ANY)) {
		bump(&drops, MEM_DROP_PENDING_FULL);
		return 1;
	}
	return 0;
}

static __always_inline int session_return(struct pt_regs *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32;
	struct pending_call *p = bpf_map_lookup_elem(&pending, &id);
	struct pending_call call;
	u64 addr;

	if (!p)
		return 0;
	call = *p;
	bpf_map_delete_elem(&pending, &id);
	addr = returned_block(ctx, tgid, &call);
	if (!addr || !call.sampled)
		return 0;
	remember_block(tgid, addr, call.size, stack_id_of(ctx, BPF_F_USER_STACK),
		       call.weight_bytes, call.weight_count);
	return 0;
}

SEC("uprobe")
int alloc_session(struct pt_regs *ctx)
{
	if (bpf_session_is_return())
		return session_return(ctx);
	return session_enter(ctx);
}

enum pid_type { PIDTYPE_PID, PIDTYPE_TGID, PIDTYPE_PGID, PIDTYPE_SID, PIDTYPE_MAX };
extern int bpf_send_signal_task(struct task_struct *task, int sig, enum pid_type type,
				u64 value) __ksym __weak;

/* Under a budget the allocator's probes are attached per process, so that the allocations of
 * every other process on the machine cost nothing. A new process of a target is stopped at
 * birth (before it runs a single instruction) until user space has attached its probes and
 * continues it; the event is reserved first, as at exit, so a stop is never left unannounced. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(hold_new_process, struct task_struct *parent, struct task_struct *child)
{
	u32 parent_tgid = parent->tgid;
	u32 child_tgid = child->tgid;
	struct mem_event *event;

	if (!hold_new_processes || child_tgid == parent_tgid ||
	    !bpf_map_lookup_elem(&targets, &parent_tgid))
		return 0;
	event = bpf_ringbuf_reserve(&events, sizeof(*event), 0);
	if (!event) {
		bump(&drops, MEM_DROP_EVENTS_FULL);
		return 0;
	}
	bpf_send_signal_task(child, SIGSTOP, PIDTYPE_TGID, 0);
	event->tgid = child_tgid;
	event->kind = MEM_EVENT_NEW_PROCESS;
	event->stack_id = 0;
	bpf_ringbuf_submit(event, 0);
	return 0;
}

/* free under a budget: only tracked blocks matter, and the table is keyed by process, so the
 * lookup is the filter (no map of targets read on a miss, which nearly every free is). */
SEC("uprobe")
int free_enter(struct pt_regs *ctx)
{
	u64 ptr = ARG1(ctx);

	/* the filter first: a free of an untracked block then calls no helper at all */
	if (ptr && maybe_tracked(ptr))
		forget_block(bpf_get_current_pid_tgid() >> 32, ptr);
	return 0;
}

/* Anonymous private mappings made by the program itself (not inside an allocator call,
 * whose blocks the uprobes already count). */
static __always_inline int on_mmap_enter(long nr, u64 addr, u64 len, u64 prot, u64 flags)
{
	u64 id;
	struct pending_call call = {};

	if (nr != nr_mmap && nr != nr_munmap)
		return 0;
	id = bpf_get_current_pid_tgid();
	if (!target_wanted(id) || bpf_map_lookup_elem(&pending, &id))
		return 0;
	if (nr == nr_munmap) {
		forget_block(id >> 32, addr);
		return 0;
	}
	if (!(flags & MAP_ANONYMOUS) || !(flags & MAP_PRIVATE) || (flags & MAP_FIXED))
		return 0;
	/* Under sessions an unsampled small allocation leaves no call in flight, so a region the
	 * allocator reserves inside it (glibc's arenas: PROT_NONE, then mprotect) is told apart
	 * by its protection: a reservation is not an allocation. */
	if (session && prot == PROT_NONE)
		return 0;
	call.size = len;
	call.kind = CALL_MMAP;
	if (bpf_map_update_elem(&pending_mmap, &id, &call, BPF_ANY))
		bump(&drops, MEM_DROP_PENDING_FULL);
	return 0;
}

static __always_inline int on_mmap_exit(void *ctx, long nr, long ret)
{
	u64 id;
	struct pending_call *p;
	u64 size;

	if (nr != nr_mmap)
		return 0;
	id = bpf_get_current_pid_tgid();
	p = bpf_map_lookup_elem(&pending_mmap, &id);
	if (!p)
		return 0;
	size = p->size;
	bpf_map_delete_elem(&pending_mmap, &id);
	if (ret < 0 && ret >= -MAX_ERRNO)
		return 0;
	TRACK_BLOCK(id >> 32, (u64)ret, size, syscall_stack_id(ctx));
	return 0;
}

/* Where the kernel has per-syscall tracepoints these three run on mmap and munmap only; the
 * raw_syscalls pair below (the fallback) runs on every system call of every process, which
 * on a busy machine costs more than everything else mem does. The contexts share the raw
 * ones' layout: the arguments (the return value) from offset 16. */
SEC("tp/syscalls/sys_enter_mmap")
int mmap_call_enter(struct trace_event_raw_sys_enter *ctx)
{
	return on_mmap_enter(nr_mmap, ctx->args[0], ctx->args[1], ctx->args[2], ctx->args[3]);
}

SEC("tp/syscalls/sys_enter_munmap")
int munmap_call_enter(struct trace_event_raw_sys_enter *ctx)
{
	return on_mmap_enter(nr_munmap, ctx->args[0], ctx->args[1], 0, 0);
}

SEC("tp/syscalls/sys_exit_mmap")
int mmap_call_exit(struct trace_event_raw_sys_exit *ctx)
{
	return on_mmap_exit(ctx, nr_mmap, ctx->ret);
}

SEC("tp/raw_syscalls/sys_enter")
int mmap_enter(struct trace_event_raw_sys_enter *ctx)
{
	return on_mmap_enter(ctx->id, ctx->args[0], ctx->args[1], ctx->args[2], ctx->args[3]);
}

SEC("tp/raw_syscalls/sys_exit")
int mmap_exit(struct trace_event_raw_sys_exit *ctx)
{
	return on_mmap_exit(ctx, ctx->id, ctx->ret);
}

static long forget_if_process(void *map, struct alloc_key *key, struct alloc_info *info,
			      u32 *tgid)
{
	if (key->tgid != *tgid)
		return 0;
	account(key->tgid, info->stack_id, -(s64)info->weight_bytes, -(s64)info->weight_count);
	if (bpf_map_delete_elem(map, key) == 0)
		count_slot(key->addr, -1);
	return 0;
}

/* exec replaces the address space: blocks of the old image are gone with it (this also drops
 * what a launcher allocated between fork and exec). */
SEC("tp/sched/sched_process_exec")
int forget_on_exec(void *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32;

	char comm[TASK_COMM_LEN];

	if (!target_wanted(id))
		return 0;
	bpf_map_delete_elem(&pending, &id); /* no call of the old image can return */
	py_note_exec(tgid);
	bpf_for_each_map_elem(&allocs, forget_if_process, &tgid, 0);
	/* The name the process had before exec (the launcher's) is not its name any more. */
	bpf_get_current_comm(comm, sizeof(comm));
	bpf_map_update_elem(&comms, &tgid, comm, BPF_ANY);
	return 0;
}

/* A thread that dies inside an allocator call (killed, or another thread called exit())
 * never returns from it: its call in flight goes with it, or it would fill the table and
 * could be taken, by a thread that reuses the id, for an outer call. */
SEC("tp/sched/sched_process_exit")
int forget_thread(void *ctx)
{
	u64 id = bpf_get_current_pid_tgid();

	bpf_map_delete_elem(&pending, &id);
	bpf_map_delete_elem(&pending_mmap, &id);
	return 0;
}

SEC("tp/exceptions/page_fault_user")
int page_fault(struct trace_event_raw_x86_exceptions *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	struct stack_key key;
	s64 stack_id;

	if (!target_wanted(id))
		return 0;
	stack_id = stack_id_of(ctx, BPF_F_USER_STACK);
	if (stack_id < 0)
		bump(&drops, MEM_DROP_STACK);
	__builtin_memset(&key, 0, sizeof(key));
	key.tgid = id >> 32;
	key.stack_id = stack_id;
	switch (count_one(&faults, &key)) {
	case -1:
		bump(&drops, MEM_DROP_FAULTS_FULL);
		break;
	case 1:
		remember_comm(key.tgid);
		break;
	}
	return 0;
}

SEC("tp/kmem/kmalloc")
int kmalloc(struct trace_event_raw_kmalloc *ctx)
{
	u64 ptr = (u64)ctx->ptr;
	u64 bytes = ctx->bytes_alloc;

	if (ptr)
		TRACK_BLOCK(0, ptr, bytes, stack_id_of(ctx, 0));
	return 0;
}

SEC("tp/kmem/kmem_cache_alloc")
int kmem_cache_alloc(struct trace_event_raw_kmem_cache_alloc *ctx)
{
	u64 ptr = (u64)ctx->ptr;
	u64 bytes = ctx->bytes_alloc;

	if (ptr)
		TRACK_BLOCK(0, ptr, bytes, stack_id_of(ctx, 0));
	return 0;
}

SEC("tp/kmem/kfree")
int kfree(struct trace_event_raw_kfree *ctx)
{
	u64 ptr = (u64)ctx->ptr;

	if (ptr)
		forget_block(0, ptr);
	return 0;
}

SEC("tp/kmem/kmem_cache_free")
int kmem_cache_free(struct trace_event_raw_kmem_cache_free *ctx)
{
	u64 ptr = (u64)ctx->ptr;

	if (ptr)
		forget_block(0, ptr);
	return 0;
}
