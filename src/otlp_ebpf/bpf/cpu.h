/* Types shared by cpu.bpf.c and collectors/cpu.py (mirrored with ctypes there and checked
 * against this object's BTF in tests). */
#ifndef OTLP_EBPF_CPU_H
#define OTLP_EBPF_CPU_H

#define CPU_COMM_LEN 16
/* user_stack_id of a --kernel-only sample that interrupted user code (outside errno range). */
#define CPU_STACK_USER_MODE (-4096)

enum cpu_drop {
	CPU_DROP_COUNTS_FULL = 0,     /* (thread, stacks) table full: the sample is not counted */
	CPU_DROP_STACK_COLLISION = 1, /* stack table full (-EEXIST): counted, stack lost */
	CPU_DROP_NO_STACK = 2,        /* neither a user nor a kernel stack could be read */
	CPU_DROP_OFFCPU_FULL = 3,     /* off-CPU table full: the block is not counted */
	CPU_DROP_START_FULL = 4,      /* no room to remember a switch-out: the block is not seen */
	CPU_DROP_EVENTS_FULL = 5,     /* pid event ring buffer full: maps may be captured late */
	/* A thread's switches seen out of order: one of them ran without the program (the
	 * kernel skipped it), so a block is lost or cut short. */
	CPU_DROP_SWITCH_IN_UNSEEN = 6,  /* left the CPU twice: the block before is lost */
	CPU_DROP_SWITCH_OUT_UNSEEN = 7, /* came back twice: the block between is lost */
	CPU_DROP_SLOTS = 8,
};

enum cpu_pid_event_kind {
	CPU_PID_SEEN = 1, /* first sample of a process: capture its maps while it lives */
	CPU_PID_EXEC = 2,
	CPU_PID_EXIT = 3,
	CPU_PID_PY_STACK = 4, /* a Python stack stored for the first time: name it while it lives */
	CPU_PID_PY_HELD = 5,  /* stopped at a sample until user space decides (python.h) */
};

/* Counts are keyed by thread and both stacks (ids are keys of `stacks`, stack_store.h); a
 * stack id < 0 is a negated errno (EFAULT: no stack of that kind, EEXIST: not stored). */
struct cpu_key {
	__u32 pid;
	__u32 tid;
	__s64 user_stack_id;
	__s64 kernel_stack_id;
	char comm[CPU_COMM_LEN];
	__s64 py_stack_id; /* Python frames (bpf/python.h words, leaf first), or < 0 */
};

struct offcpu_value {
	__u64 count;
	__u64 total_ns;
};

struct offcpu_start {
	__u64 ts;
	__u32 pid;
	__u32 pad;
	__s64 user_stack_id;
	__s64 kernel_stack_id;
	char comm[CPU_COMM_LEN];
	__s64 py_stack_id;
};

struct pid_event {
	__u32 pid;
	__u32 kind;
};

/* CPU_PID_PY_STACK: which stored stack holds Python frames of which process. */
struct py_stack_event {
	__u32 pid;
	__u32 kind;
	__s64 stack_id;
};

#endif
