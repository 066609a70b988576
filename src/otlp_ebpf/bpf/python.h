/* CPython frames read at sample time, without any change to the interpreter.
 *
 * User space registers each CPython process in `py_procs` with where its runtime lives
 * (_PyRuntime) and the layout of its version's structures (collectors/python_frames.py).
 * At a sample of a registered process, the sampled thread's PyThreadState is found in the
 * main interpreter's thread list (its `thread_id` is pthread_self(), which is the thread's
 * FS base on x86_64; the answer is cached per thread), then the frame chain is walked leaf
 * first. Each frame is one word: the code object's address, the instruction index and
 * whether the frame is the first one of a C-level evaluation call (`PY_FRAME_ENTRY`), which
 * is how user space lines Python frames up with the native `_PyEval_EvalFrameDefault` frames.
 * Code objects are named in user space, from the process's memory.
 *
 * Shared by the BPF programs and mirrored by ctypes in collectors/python_frames.py. */
#ifndef OTLP_EBPF_PYTHON_H
#define OTLP_EBPF_PYTHON_H

#define PY_MAX_FRAMES 64    /* a power of two: the frame index is masked with it */
#define PY_MAX_THREADS 128  /* threads searched for the sampled one's state */
#define PY_NO_FIELD 0xffff  /* a structure field this version does not have */

/* A frame word: code object address (bits 0-47), instruction index (48-62), entry (63). */
#define PY_FRAME_ADDR_MASK ((1ULL << 48) - 1)
#define PY_FRAME_LASTI_SHIFT 48
#define PY_FRAME_LASTI_MAX 0x7fff /* index unknown or beyond what fits */
#define PY_FRAME_ENTRY (1ULL << 63)
/* Appended to a stored Python stack cut at PY_MAX_FRAMES (no code object lives at 1). */
#define PY_FRAME_TRUNCATED_MARK 1ULL
/* In a stack stored with its native frames first (mem.bpf.c): where the Python words begin. */
#define PY_NATIVE_END 2ULL

/* _PyInterpreterFrame.owner of the shim frame a C call into the interpreter pushes (3.12+) */
#define PY_OWNED_BY_CSTACK 3

enum py_stack_flags {
	PY_STACK_TRUNCATED = 1, /* more frames than PY_MAX_FRAMES: the root side is missing */
	PY_STACK_NO_THREAD = 2, /* the thread has no Python state (not started by Python yet) */
	PY_STACK_READ_FAILED = 4, /* a read of the interpreter's memory failed mid-walk */
};

/* Where a registered process keeps its interpreter state, and its version's layout. */
struct py_proc {
	__u64 runtime; /* address of _PyRuntime */
	__u32 version; /* major << 8 | minor */
	__u16 runtime_interpreters_head;
	__u16 interp_tstate_head;
	__u16 tstate_next;
	__u16 tstate_thread_id;
	__u16 tstate_frame;         /* the current frame, or (3.11, 3.12) the current _PyCFrame */
	__u16 cframe_current_frame; /* PY_NO_FIELD unless tstate_frame points to a _PyCFrame */
	__u16 frame_back;
	__u16 frame_code;
	__u16 frame_lasti;    /* f_lasti (int, < 3.11) or the instruction pointer (3.11+) */
	__u16 frame_is_entry; /* 3.11 */
	__u16 frame_owner;    /* 3.11+ */
	__u16 code_adaptive;  /* 3.11+: where the code object's instructions start */
	__u16 pad;
};

struct py_stack {
	__u32 nr; /* frames filled, leaf first */
	__u32 flags;
	__u64 frames[PY_MAX_FRAMES];
};

#ifdef __bpf__

#include "counters.h" /* bump() */

struct thread_struct___py {
	unsigned long fsbase;
} __attribute__((preserve_access_index));

struct task_struct___py {
	struct thread_struct___py thread;
} __attribute__((preserve_access_index));

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, u32);
	__type(value, struct py_proc);
} py_procs SEC(".maps");

/* tid -> its PyThreadState, checked against the thread's FS base at every use. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, u32);
	__type(value, u64);
} py_threads SEC(".maps");

static __always_inline u64 py_read_ptr(u64 base, u16 offset)
{
	u64 value = 0;

	if (offset == PY_NO_FIELD || bpf_probe_read_user(&value, sizeof(value), (void *)(base + offset)))
		return 0;
	return value;
}

static __always_inline u64 py_current_fsbase(void)
{
	struct task_struct___py *task = (void *)bpf_get_current_task();

	return BPF_CORE_READ(task, thread.fsbase);
}

struct py_thread_search {
	const struct py_proc *proc;
	u64 fsbase;
	u64 tstate; /* the candidate; the match once found */
	bool found;
};

static long py_thread_step(u64 index, void *arg)
{
	struct py_thread_search *st = arg;

	if (!st->tstate)
		return 1;
	if (py_read_ptr(st->tstate, st->proc->tstate_thread_id) == st->fsbase) {
		st->found = true;
		return 1;
	}
	st->tstate = py_read_ptr(st->tstate, st->proc->tstate_next);
	return 0;
}

/* The sampled thread's PyThreadState, or 0 when it has none. */
static __always_inline u64 py_thread_state(const struct py_proc *proc, u32 tid)
{
	u64 fsbase = py_current_fsbase();
	u64 *cached = bpf_map_lookup_elem(&py_threads, &tid);
	struct py_thread_search st = { .proc = proc, .fsbase = fsbase };
	u64 interp;

	if (!fsbase)
		return 0;
	if (cached && *cached && py_read_ptr(*cached, proc->tstate_thread_id) == fsbase)
		return *cached;
	interp = py_read_ptr(proc->runtime, proc->runtime_interpreters_head);
	if (!interp)
		return 0;
	st.tstate = py_read_ptr(interp, proc->interp_tstate_head);
	bpf_loop(PY_MAX_THREADS, py_thread_step, &st, 0);
	if (!st.found)
		return 0;
	bpf_map_update_elem(&py_threads, &tid, &st.tstate, BPF_ANY);
	return st.tstate;
}

/* Instruction index of a frame (in code units from 3.10 on, bytes before). */
static __always_inline u64 py_frame_lasti(const struct py_proc *proc, u64 frame, u64 code)
{
	u64 start, instr;
	s32 lasti = 0;

	if (proc->version < 0x30b) {
		if (bpf_probe_read_user(&lasti, sizeof(lasti), (void *)(frame + proc->frame_lasti)))
			return PY_FRAME_LASTI_MAX;
		if (lasti < 0 || lasti > PY_FRAME_LASTI_MAX)
			return PY_FRAME_LASTI_MAX;
		return lasti;
	}
	instr = py_read_ptr(frame, proc->frame_lasti);
	start = code + proc->code_adaptive;
	if (instr < start || (instr - start) / 2 > PY_FRAME_LASTI_MAX)
		return PY_FRAME_LASTI_MAX;
	return (instr - start) / 2;
}

static __always_inline u8 py_read_u8(u64 base, u16 offset)
{
	u8 value = 0;

	if (offset != PY_NO_FIELD)
		bpf_probe_read_user(&value, sizeof(value), (void *)(base + offset));
	return value;
}

struct py_walk_state {
	const struct py_proc *proc;
	struct py_stack *out;
	u64 frame;
};

/* One step of the walk: record `frame` (or mark an entry at a shim) and move to its caller. */
static long py_walk_step(u64 index, void *arg)
{
	struct py_walk_state *st = arg;
	const struct py_proc *proc = st->proc;
	struct py_stack *out = st->out;
	u64 frame = st->frame, code, word;
	u32 nr = out->nr;

	if (!frame)
		return 1;
	if (nr >= PY_MAX_FRAMES) {
		out->flags |= PY_STACK_TRUNCATED;
		return 1;
	}
	st->frame = py_read_ptr(frame, proc->frame_back);
	if (proc->version >= 0x30c && py_read_u8(frame, proc->frame_owner) == PY_OWNED_BY_CSTACK) {
		/* The shim below the first frame of an evaluation call. */
		if (nr > 0)
			out->frames[(nr - 1) & (PY_MAX_FRAMES - 1)] |= PY_FRAME_ENTRY;
		return 0;
	}
	code = py_read_ptr(frame, proc->frame_code);
	if (!code) {
		out->flags |= PY_STACK_READ_FAILED;
		return 1;
	}
	word = (code & PY_FRAME_ADDR_MASK) |
	       (py_frame_lasti(proc, frame, code) << PY_FRAME_LASTI_SHIFT);
	/* Before 3.11 every Python call is a C-level evaluation call. */
	if (proc->version < 0x30b || py_read_u8(frame, proc->frame_is_entry))
		word |= PY_FRAME_ENTRY;
	out->frames[nr & (PY_MAX_FRAMES - 1)] = word;
	out->nr = nr + 1;
	return 0;
}

/* Walk the frames of the sampled thread into `out` (leaf first). */
static __always_inline void py_walk(const struct py_proc *proc, u32 tid, struct py_stack *out)
{
	u64 tstate = py_thread_state(proc, tid);
	struct py_walk_state st = { .proc = proc, .out = out };

	out->nr = 0;
	out->flags = 0;
	if (!tstate) {
		out->flags = PY_STACK_NO_THREAD;
		return;
	}
	st.frame = py_read_ptr(tstate, proc->tstate_frame);
	if (st.frame && proc->cframe_current_frame != PY_NO_FIELD)
		st.frame = py_read_ptr(st.frame, proc->cframe_current_frame);
	/* Shim frames (3.12+) take steps too: a few more than the frames kept. */
	bpf_loop(PY_MAX_FRAMES + PY_MAX_FRAMES / 4, py_walk_step, &st, 0);
}

/* Holding a new image until user space knows whether it runs CPython (targeted runs only,
 * `python_hold` set by user space): an exec'd target is "undecided" until then, and the
 * first probe that sees it running stops it (SIGSTOP) and tells user space, which reads its
 * maps, registers its interpreter in `py_procs` (or decides that it runs none), deletes the
 * entry and continues it. The loader maps libpython after the exec, so the first allocator
 * call (mem) or sample (cpu) of the new image, not the exec, is where it can be found: both
 * come while the interpreter starts, before it runs the program's own code. */
#define PY_SIGSTOP 19
#define PY_SIGCONT 18

const volatile u32 python_hold = 0;

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, u32);
	__type(value, u8);
} py_undecided SEC(".maps");

/* A target exec'd: its new image is undecided. */
static __always_inline void py_note_exec(u32 tgid)
{
	u8 one = 1;

	if (python_hold)
		bpf_map_update_elem(&py_undecided, &tgid, &one, BPF_ANY);
}

/* Stop the current (target) process when its image is undecided; true when the caller must
 * tell user space (which continues it). */
static __always_inline bool py_hold(u32 tgid)
{
	if (!python_hold || !bpf_map_lookup_elem(&py_undecided, &tgid))
		return false;
	bpf_send_signal(PY_SIGSTOP);
	return true;
}

/* What every collector's hold event begins with (struct mem_event, struct pid_event). */
struct py_hold_event {
	__u32 tgid;
	__u32 kind;
};

/* A new image's first probe in a target (an allocator call for mem, a sample for cpu):
 * stopped until user space knows whether it runs CPython. The event (`size` bytes from
 * `ring`: `tgid` and `kind` first, the rest zeroed) is reserved first, so a stop is never
 * left unannounced; with no room the process runs on, counted in slot `drop_slot` of
 * `drops`. */
static __always_inline void hold_if_undecided(void *ring, const __u32 size, __u32 kind,
					      __u32 tgid, void *drops, __u32 drop_slot)
{
	struct py_hold_event *event;

	if (!python_hold || !bpf_map_lookup_elem(&py_undecided, &tgid))
		return;
	event = bpf_ringbuf_reserve(ring, size, 0);
	if (!event) {
		bump(drops, drop_slot);
		return;
	}
	py_hold(tgid);
	__builtin_memset(event, 0, size);
	event->tgid = tgid;
	event->kind = kind;
	bpf_ringbuf_submit(event, 0);
}

/* The hold could not be told to user space: cancel it (a SIGCONT discards a pending stop). */
static __always_inline void py_unhold(void)
{
	bpf_send_signal(PY_SIGCONT);
}

/* Python frames of the current task when its process is a registered CPython. */
static __always_inline void py_read_stack(u32 tgid, u32 tid, struct py_stack *out)
{
	const struct py_proc *proc = bpf_map_lookup_elem(&py_procs, &tgid);

	out->nr = 0;
	out->flags = 0;
	if (proc)
		py_walk(proc, tid, out);
}

#endif /* __bpf__ */
#endif
