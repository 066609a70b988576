/* CPU samples for user-space DWARF unwinding: per sample of a target task, the user registers,
 * the kernel stack (when the timer hit the kernel) and a copy of the top of the user stack go to
 * user space through a ring buffer. The stack is copied from the user stack pointer upwards,
 * page by page when the whole window is not readable, so a shallow stack near the top of its
 * mapping is still copied up to that top. Wakeups are batched: the consumer polls. */
#include "core.h"
#include "target.h"
#include "counters.h"
#include "cpu_dwarf.h"
#include "python.h"
#include "exit_maps.h"

char LICENSE[] SEC("license") = "GPL";

/* Bytes of user stack copied per sample (at most DWARF_MAX_WINDOW). */
const volatile u32 stack_window = 16384;
/* Wake the consumer only once this much data is pending; it polls on a timer otherwise. */
const volatile u64 wakeup_bytes = 256 * 1024;
/* Walk the frames of registered CPython processes (python.h); 0 with --no-python. */
const volatile u32 python_frames = 1;

/* The perf_event context: the UAPI bpf_user_pt_regs_t layout, fixed (no CO-RE relocation:
 * the verifier checks context offsets against the UAPI, and only full-width loads pass). */
#if defined(__TARGET_ARCH_arm64)
struct dwarf_ctx_regs {
	u64 regs[31];
	u64 sp;
	u64 pc;
	u64 pstate;
};
#else
struct dwarf_ctx_regs {
	u64 r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di;
	u64 orig_ax, ip, cs, flags, sp, ss;
};
#endif

struct bpf_perf_event_data_dwarf {
	struct dwarf_ctx_regs regs;
	u64 sample_period;
	u64 addr;
};

/* Keep a context load at full width: the compiler narrows `x & 3` to a byte load, which the
 * verifier rejects for perf_event contexts. */
static __always_inline u64 ctx_load(const u64 *field)
{
	u64 v = *(volatile const u64 *)field;

	asm volatile("" : "+r"(v));
	return v;
}

/* The record is built here (too big for the BPF stack, and for a per-CPU value, which is
 * limited to 32 KB): one slot per CPU, sized by user space to the possible CPUs. The slack lets
 * the verifier prove that a page-sized copy at any offset below the window stays inside. */
struct dwarf_scratch {
	struct dwarf_sample sample;
	u8 slack[DWARF_PAGE];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct dwarf_scratch);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 * 1024 * 1024);
} samples SEC(".maps");

COUNTER_ARRAY(drops, DWARF_DROP_SLOTS);

/* Processes sampled, and whether user space was woken for their first sample since their last
 * exec (ANNOUNCED): it reads a new process's maps at once, while the process still lives,
 * however short its life. At exit, a process found here has its mappings recorded. */
#define ANNOUNCED 1
#define EXECED 2
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, u32);
	__type(value, u8);
} announced SEC(".maps");

#if defined(__TARGET_ARCH_arm64)
static __always_inline bool interrupted_user(struct bpf_perf_event_data_dwarf *ctx)
{
	return (ctx_load(&ctx->regs.pstate) & 0xf) == 0; /* EL0t */
}

static __always_inline void user_regs_from_ctx(struct bpf_perf_event_data_dwarf *ctx, u64 *regs)
{
	regs[DWARF_REG_PC] = ctx_load(&ctx->regs.pc);
	regs[DWARF_REG_SP] = ctx_load(&ctx->regs.sp);
	regs[DWARF_REG_FP] = ctx_load(&ctx->regs.regs[29]);
	regs[DWARF_REG_LR] = ctx_load(&ctx->regs.regs[30]);
}

static __always_inline void user_regs_from_task(struct pt_regs *uregs, u64 *regs)
{
	regs[DWARF_REG_PC] = BPF_CORE_READ(uregs, pc);
	regs[DWARF_REG_SP] = BPF_CORE_READ(uregs, sp);
	regs[DWARF_REG_FP] = BPF_CORE_READ(uregs, regs[29]);
	regs[DWARF_REG_LR] = BPF_CORE_READ(uregs, regs[30]);
}
#else
static __always_inline bool interrupted_user(struct bpf_perf_event_data_dwarf *ctx)
{
	return (ctx_load(&ctx->regs.cs) & 3) == 3;
}

static __always_inline void user_regs_from_ctx(struct bpf_perf_event_data_dwarf *ctx, u64 *regs)
{
	regs[DWARF_REG_PC] = ctx_load(&ctx->regs.ip);
	regs[DWARF_REG_SP] = ctx_load(&ctx->regs.sp);
	regs[DWARF_REG_FP] = ctx_load(&ctx->regs.bp);
	regs[DWARF_REG_LR] = 0;
}

static __always_inline void user_regs_from_task(struct pt_regs *uregs, u64 *regs)
{
	regs[DWARF_REG_PC] = BPF_CORE_READ(uregs, ip);
	regs[DWARF_REG_SP] = BPF_CORE_READ(uregs, sp);
	regs[DWARF_REG_FP] = BPF_CORE_READ(uregs, bp);
	regs[DWARF_REG_LR] = 0;
}
#endif

/* Copy up to `window` bytes from `sp` upwards; returns the bytes copied. One read when the
 * whole window is mapped; otherwise page by page until the first unreadable page. */
static __always_inline u32 copy_user_stack(struct dwarf_sample *s, u64 sp, u32 window)
{
	u32 copied = 0, len, n;

	if (!bpf_probe_read_user(s->stack, window, (void *)sp))
		return window;
	s->flags |= SAMPLE_STACK_FAULT;
	len = DWARF_PAGE - (u32)(sp & (DWARF_PAGE - 1));
	for (int i = 0; i < DWARF_MAX_WINDOW / DWARF_PAGE + 1; i++) {
		if (copied >= window)
			break;
		n = window - copied;
		if (n > len)
			n = len;
		/* Bounds the verifier can follow: 0 <= copied < MAX, 0 <= n <= PAGE. */
		asm volatile("" : "+r"(n), "+r"(copied));
		n &= 2 * DWARF_PAGE - 1;
		if (n > DWARF_PAGE)
			n = DWARF_PAGE;
		copied &= DWARF_MAX_WINDOW - 1;
		if (bpf_probe_read_user(s->stack + copied, n, (void *)(sp + copied)))
			break;
		copied += n;
		len = DWARF_PAGE;
	}
	return copied;
}

static __always_inline u64 wakeup_flag(u32 tgid)
{
	u8 *state = bpf_map_lookup_elem(&announced, &tgid);
	u8 one = ANNOUNCED;

	if (!state || *state != ANNOUNCED) {
		bpf_map_update_elem(&announced, &tgid, &one, BPF_ANY);
		return BPF_RB_FORCE_WAKEUP;
	}
	return bpf_ringbuf_query(&samples, BPF_RB_AVAIL_DATA) >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP
									      : BPF_RB_NO_WAKEUP;
}

/* A new image: its first sample wakes user space again (the maps changed). A process sampled
 * before stays known, so its mappings are still recorded at its exit. Runs at every exec on
 * the host, almost always of a process never sampled: a lookup, then a write in place (an
 * update of an LRU hash takes a free entry before it finds the key missing: twice the cost). */
SEC("tp/sched/sched_process_exec")
int dwarf_exec(void *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tgid = pid_tgid >> 32;
	u8 *state = bpf_map_lookup_elem(&announced, &tgid);

	if (state)
		*state = EXECED;
	if (target_wanted(pid_tgid))
		py_note_exec(tgid);
	return 0;
}

/* The last thread of a sampled process exits: its code mappings go to user space, which may
 * not have read its maps yet (exit_maps.h). It will not be sampled again. */
SEC("tp/sched/sched_process_exit")
int dwarf_exit(struct trace_event_raw_sched_process_exit *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tgid = pid_tgid >> 32;
	bool last = process_exits(ctx, pid_tgid);
	if (!last || !bpf_map_lookup_elem(&announced, &tgid))
		return 0;
	bpf_map_delete_elem(&announced, &tgid);
	send_exit_maps(tgid);
	return 0;
}

SEC("perf_event")
int dwarf_sample(struct bpf_perf_event_data_dwarf *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	bool in_user = interrupted_user(ctx);
	u32 cpu = bpf_get_smp_processor_id(), window = stack_window;
	struct dwarf_scratch *buf;
	struct dwarf_sample *s;
	u64 size, flags;
	long n;

	if ((pid_tgid >> 32) == 0 || !target_wanted(pid_tgid))
		return 0;
	buf = bpf_map_lookup_elem(&scratch, &cpu);
	if (!buf) {
		bump(&drops, DWARF_DROP_NO_SCRATCH);
		return 0;
	}
	s = &buf->sample;
	s->pid = pid_tgid >> 32;
	s->tid = (u32)pid_tgid;
	bpf_get_current_comm(s->comm, sizeof(s->comm));
	s->flags = 0;
	s->kstack_bytes = 0;
	s->stack_bytes = 0;
	s->pad = 0;
	if (in_user) {
		user_regs_from_ctx(ctx, s->regs);
	} else {
		s->flags |= SAMPLE_IN_KERNEL;
		n = bpf_get_stack(ctx, s->kstack, sizeof(s->kstack), 0);
		if (n > 0)
			s->kstack_bytes = n;
		user_regs_from_task((struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf()),
				    s->regs);
		/* A task past exit_mm has no user space left: only its kernel stack counts. */
		if (!BPF_CORE_READ((struct task_struct___exit *)bpf_get_current_task_btf(), mm))
			s->flags |= SAMPLE_NO_USER_REGS;
	}
	if (window > DWARF_MAX_WINDOW)
		window = DWARF_MAX_WINDOW;
	if (!s->regs[DWARF_REG_PC] || !s->regs[DWARF_REG_SP])
		s->flags |= SAMPLE_NO_USER_REGS;
	else if (window && !(s->flags & SAMPLE_NO_USER_REGS))
		s->stack_bytes = copy_user_stack(s, s->regs[DWARF_REG_SP], window);
	if (python_frames)
		py_read_stack(s->pid, s->tid, &s->py);
	else
		s->py.nr = 0;
	if (python_frames && py_hold(s->pid))
		s->flags |= SAMPLE_PY_HELD;
	size = DWARF_SAMPLE_HEADER_BYTES + s->stack_bytes;
	if (size > sizeof(struct dwarf_sample))
		size = sizeof(struct dwarf_sample);
	flags = (s->flags & SAMPLE_PY_HELD) ? BPF_RB_FORCE_WAKEUP : wakeup_flag(s->pid);
	if (bpf_ringbuf_output(&samples, s, size, flags)) {
		bump(&drops, DWARF_DROP_RINGBUF_FULL);
		if (s->flags & SAMPLE_PY_HELD)
			py_unhold();
	}
	return 0;
}
