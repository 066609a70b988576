/* On-CPU sampling and off-CPU (blocked) time by stack, aggregated in the kernel.
 *
 * on_cpu_sample runs on a software CPU-clock perf event on every CPU and counts
 * (pid, tid, user stack, kernel stack, comm). Off-CPU: at sched_switch the task leaving the
 * CPU records when and where it blocked; when it is switched back in, the blocked time is added
 * to its stacks' total (user space adds the blocks still in progress when the run ends, from
 * offcpu_start). tp_btf is the fast path, the sched_switch tracepoint the fallback; user
 * space disables the one it does not use. Pid events (first sample, exec, exit) go through a
 * small ring buffer so user space captures /proc/PID/maps while short-lived processes live; a
 * process gone before that is named with the mappings recorded at its exit (exit_maps.h). */
#include "core.h"
#include "target.h"
#include "counters.h"
#include "cpu.h"
#include "stack_store.h"
#include "python.h"
#include "exit_maps.h"

char LICENSE[] SEC("license") = "GPL";

const volatile u32 user_stacks = 1;
const volatile u32 kernel_stacks = 1;
const volatile u64 min_block_ns = 0;
/* Walk the frames of registered CPython processes (python.h); 0 with --no-python. */
const volatile u32 python_frames = 1;

/* Mirrors the UAPI context of perf_event programs (the verifier rewrites its accesses). */
struct bpf_perf_event_data {
	struct pt_regs regs;
	__u64 sample_period;
	__u64 addr;
};

/* Every stack once (stack_store.h): a sample never loses its stack to a bucket collision. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, s64);
	__type(value, struct stored_stack);
} stacks SEC(".maps");

/* Where a stack is read before it is stored. Per CPU: samples (timer interrupt) and
 * sched_switch (interrupts off) never interrupt one another on a CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct stored_stack);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, struct cpu_key);
	__type(value, u64);
} counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct cpu_key);
	__type(value, struct offcpu_value);
} offcpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, u32);
	__type(value, struct offcpu_start);
} offcpu_start SEC(".maps");

/* Processes sampled: SEEN once user space was told of the first sample since the last exec,
 * EXECED after an exec (the next sample tells it again). At exit, a process found here has
 * its mappings recorded. */
#define SEEN 1
#define EXECED 2

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, u32);
	__type(value, u8);
} seen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} pid_events SEC(".maps");

COUNTER_ARRAY(drops, CPU_DROP_SLOTS);

static __always_inline void send_pid_event(u32 pid, u32 kind)
{
	struct pid_event *ev = bpf_ringbuf_reserve(&pid_events, sizeof(*ev), 0);

	if (!ev) {
		bump(&drops, CPU_DROP_EVENTS_FULL);
		return;
	}
	ev->pid = pid;
	ev->kind = kind;
	bpf_ringbuf_submit(ev, 0);
}

static __always_inline void note_process(u32 tgid)
{
	u8 *state = bpf_map_lookup_elem(&seen, &tgid);
	u8 one = SEEN;

	if (state && *state == SEEN)
		return;
	bpf_map_update_elem(&seen, &tgid, &one, BPF_ANY);
	send_pid_event(tgid, CPU_PID_SEEN);
}

/* The current thread's Python frames, stored like a stack (a new one is announced, so user
 * space names its code objects while the process lives). `buf` is free scratch; struct
 * py_stack shares the head of struct stored_stack (nr, a 32-bit field, then the words). */
static __always_inline s64 read_python_stack(struct stored_stack *buf, u32 tgid, u32 tid)
{
	struct py_stack *py = (struct py_stack *)buf;
	struct py_stack_event *ev;
	s64 id;
	bool known;

	py_read_stack(tgid, tid, py);
	if (!py->nr)
		return STACK_NONE;
	if (py->flags & PY_STACK_TRUNCATED) {
		buf->ips[PY_MAX_FRAMES] = PY_FRAME_TRUNCATED_MARK;
		buf->nr = PY_MAX_FRAMES + 1;
	}
	buf->pad = 0;
	id = stored_stack_hash(buf);
	known = bpf_map_lookup_elem(&stacks, &id) != NULL;
	id = store_read_stack(&stacks, buf);
	if (id < 0 || known)
		return id;
	ev = bpf_ringbuf_reserve(&pid_events, sizeof(*ev), 0);
	if (!ev) {
		bump(&drops, CPU_DROP_EVENTS_FULL);
		return id;
	}
	ev->pid = tgid;
	ev->kind = CPU_PID_PY_STACK;
	ev->stack_id = id;
	bpf_ringbuf_submit(ev, 0);
	return id;
}

/* Stack ids for the current task; a stack that cannot be stored is counted, a missing
 * stack of one kind is normal (a kernel thread has no user stack, a sample in user mode no
 * kernel stack). Only a sample missing every kind asked for counts as without stack, except
 * with kernel stacks alone: there a sample with no kernel stack interrupted user code, and
 * is marked so. */
static __always_inline void read_stacks(void *ctx, s64 *user_id, s64 *kernel_id, s64 *py_id)
{
	s64 uid = -EFAULT, kid = -EFAULT;
	u32 zero = 0;
	struct stored_stack *buf = bpf_map_lookup_elem(&scratch, &zero);

	if (!buf) {
		bump(&drops, CPU_DROP_NO_STACK);
		*user_id = -EFAULT;
		*kernel_id = -EFAULT;
		*py_id = -EFAULT;
		return;
	}
	if (user_stacks)
		uid = store_stack(ctx, &stacks, buf, BPF_F_USER_STACK);
	if (kernel_stacks)
		kid = store_stack(ctx, &stacks, buf, 0);
	if (!user_stacks && kid == -EFAULT)
		uid = CPU_STACK_USER_MODE;
	if (uid == -EEXIST || kid == -EEXIST)
		bump(&drops, CPU_DROP_STACK_COLLISION);
	else if (uid < 0 && uid != CPU_STACK_USER_MODE && kid < 0)
		bump(&drops, CPU_DROP_NO_STACK);
	*user_id = uid;
	*kernel_id = kid;
	*py_id = STACK_NONE;
	if (python_frames && user_stacks) {
		u64 pid_tgid = bpf_get_current_pid_tgid();

		*py_id = read_python_stack(buf, pid_tgid >> 32, (u32)pid_tgid);
	}
}

SEC("perf_event")
int on_cpu_sample(struct bpf_perf_event_data *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tid = (u32)pid_tgid;
	struct cpu_key key;

	if (tid == 0 || !target_wanted(pid_tgid))
		return 0; /* the idle task is not work */
	__builtin_memset(&key, 0, sizeof(key));
	key.pid = pid_tgid >> 32;
	key.tid = tid;
	read_stacks(ctx, &key.user_stack_id, &key.kernel_stack_id, &key.py_stack_id);
	bpf_get_current_comm(key.comm, sizeof(key.comm));
	note_process(key.pid);
	if (python_frames && user_stacks)
		hold_if_undecided(&pid_events, sizeof(struct pid_event), CPU_PID_PY_HELD, key.pid,
				  &drops, CPU_DROP_EVENTS_FULL);
	if (count_one(&counts, &key) < 0)
		bump(&drops, CPU_DROP_COUNTS_FULL);
	return 0;
}

/* PF_EXITING (include/linux/sched.h): set early in do_exit(), after which a task's last
 * switch-outs are its way out (do_task_dead), not blocks it will come back from. */
#define CPU_PF_EXITING 0x00000004

/* A thread that stops being followed (an exec into another name, its exit) forgets its last
 * switch, so its next switch-in is not taken for one whose switch-out went unseen. */
static __always_inline void forget_thread(u32 tid)
{
	if (bpf_map_lookup_elem(&offcpu_start, &tid))
		bpf_map_delete_elem(&offcpu_start, &tid);
}

/* The task leaving the CPU is the current one: remember when and where it stopped. Its entry
 * stays while it runs (ts 0), so a switch the program did not see shows as two switch-outs or
 * two switch-ins in a row, and the block it hides is counted lost rather than vanishing. */
static __always_inline void switch_out(void *ctx, u32 prev_tid)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct offcpu_start *last;
	struct offcpu_start start;

	if (prev_tid == 0 || (u32)pid_tgid != prev_tid)
		return;
	if (!target_wanted(pid_tgid) || (BPF_CORE_READ(task, flags) & CPU_PF_EXITING)) {
		forget_thread(prev_tid);
		return;
	}
	last = bpf_map_lookup_elem(&offcpu_start, &prev_tid);
	if (last && last->ts)
		bump(&drops, CPU_DROP_SWITCH_IN_UNSEEN);
	__builtin_memset(&start, 0, sizeof(start));
	start.ts = bpf_ktime_get_ns();
	start.pid = pid_tgid >> 32;
	read_stacks(ctx, &start.user_stack_id, &start.kernel_stack_id, &start.py_stack_id);
	bpf_get_current_comm(start.comm, sizeof(start.comm));
	if (last) {
		/* In place: the entry is only this thread's, and a replaced element would go back
		 * to the map's free list at once, under lookups running on other CPUs. */
		__builtin_memcpy(last, &start, sizeof(start));
		return;
	}
	if (bpf_map_update_elem(&offcpu_start, &prev_tid, &start, BPF_NOEXIST))
		bump(&drops, CPU_DROP_START_FULL);
}

static __always_inline void add_offcpu(struct cpu_key *key, u64 delta)
{
	struct offcpu_value *value = bpf_map_lookup_elem(&offcpu, key);
	struct offcpu_value first = { .count = 1, .total_ns = delta };

	if (!value) {
		if (!bpf_map_update_elem(&offcpu, key, &first, BPF_NOEXIST))
			return;
		value = bpf_map_lookup_elem(&offcpu, key);
		if (!value) {
			bump(&drops, CPU_DROP_OFFCPU_FULL);
			return;
		}
	}
	__sync_fetch_and_add(&value->count, 1);
	__sync_fetch_and_add(&value->total_ns, delta);
}

/* The task coming back: its blocked time goes to the stacks it left with. */
static __always_inline void switch_in(u32 next_tid)
{
	struct offcpu_start *start;
	struct cpu_key key;
	u64 delta;

	if (next_tid == 0)
		return;
	start = bpf_map_lookup_elem(&offcpu_start, &next_tid);
	if (!start)
		return; /* not followed, or asleep since before the attach */
	if (!start->ts) {
		bump(&drops, CPU_DROP_SWITCH_OUT_UNSEEN);
		return;
	}
	delta = bpf_ktime_get_ns() - start->ts;
	__builtin_memset(&key, 0, sizeof(key));
	key.pid = start->pid;
	key.tid = next_tid;
	key.user_stack_id = start->user_stack_id;
	key.kernel_stack_id = start->kernel_stack_id;
	key.py_stack_id = start->py_stack_id;
	__builtin_memcpy(key.comm, start->comm, sizeof(key.comm));
	start->ts = 0; /* on the CPU: only this thread's own switches touch its entry */
	if (delta >= min_block_ns)
		add_offcpu(&key, delta);
}

SEC("tp_btf/sched_switch")
int BPF_PROG(btf_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	u32 prev_tid = prev->pid;
	u32 next_tid = next->pid;

	switch_out(ctx, prev_tid);
	switch_in(next_tid);
	return 0;
}

SEC("tp/sched/sched_switch")
int tp_sched_switch(struct trace_event_raw_sched_switch *ctx)
{
	u32 prev_tid = ctx->prev_pid;
	u32 next_tid = ctx->next_pid;

	switch_out(ctx, prev_tid);
	switch_in(next_tid);
	return 0;
}

SEC("tp/sched/sched_process_exec")
int on_exec(void *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tgid = pid_tgid >> 32;
	u8 execed = EXECED;

	if (!target_wanted(pid_tgid))
		return 0;
	/* The loader has not mapped the libraries yet: the first sample of the new image asks
	 * for another capture. */
	bpf_map_update_elem(&seen, &tgid, &execed, BPF_EXIST);
	py_note_exec(tgid);
	send_pid_event(tgid, CPU_PID_EXEC);
	return 0;
}

/* A sampled process exits: record its mappings, which user space may not have read yet (a
 * program of its own, so that a kernel without the mapping iterator still loads on_exit;
 * user space attaches it first, so it runs before on_exit forgets the process). */
SEC("tp/sched/sched_process_exit")
int record_exit_maps(struct trace_event_raw_sched_process_exit *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tgid = pid_tgid >> 32;
	bool last = process_exits(ctx, pid_tgid);
	if (last && bpf_map_lookup_elem(&seen, &tgid))
		send_exit_maps(tgid);
	return 0;
}

SEC("tp/sched/sched_process_exit")
int on_exit(void *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tgid = pid_tgid >> 32;
	u32 tid = (u32)pid_tgid;

	bpf_map_delete_elem(&offcpu_start, &tid);
	if (tid != tgid || !bpf_map_lookup_elem(&seen, &tgid))
		return 0;
	bpf_map_delete_elem(&seen, &tgid);
	send_pid_event(tgid, CPU_PID_EXIT);
	return 0;
}
