/* Types shared by syscalls.bpf.c and collectors/syscalls.py (mirrored with ctypes there and
 * checked against this object's BTF in tests). */
#ifndef OTLP_EBPF_SYSCALLS_H
#define OTLP_EBPF_SYSCALLS_H

#define SYSCALL_SLOTS 40
#define MAX_SYSCALL_NR 1024

enum syscalls_drop {
	DROP_STATS_FULL = 0,   /* (tgid, nr) table full: counted without its process */
	DROP_ERRNO_FULL = 1,   /* (tgid, nr, errno) table full: counted, errno unknown */
	DROP_START_FULL = 2,   /* no room to remember a start time: counted without latency */
	DROP_EXIT_LOST = 3,    /* exit event lost: the process's rows stay in the table to the end */
	DROP_STATS_NOMEM = 4,  /* no memory for a new (tgid, nr) row: counted without its process */
	DROP_SLOTS = 8,
};

#define MAX_ERRNO_NR 4096

/* Which (tgid, nr) and (tgid, nr, errno) entries a process created, so that its rows can be
 * taken out of the tables when it exits without walking them. */
struct proc_usage {
	__u64 nrs[MAX_SYSCALL_NR / 64];
	__u64 errs[MAX_ERRNO_NR / 64];
};

/* A process whose last thread exited: user space folds its rows out of the tables. */
struct exit_event {
	__u32 tgid;
	__u32 pad;
	char comm[16];
	struct proc_usage usage;
};

struct syscall_key {
	__u32 tgid;
	__u32 nr;
};

struct syscall_stats {
	__u64 count;
	__u64 errors;
	__u64 total_ns;
	__u64 min_ns;
	__u64 max_ns;
	__u64 hist[SYSCALL_SLOTS];
};

struct errno_key {
	__u32 tgid;
	__u32 nr;
	__u32 err;
	__u32 pad;
};

struct syscall_start {
	__u64 ts;
	__u64 nr;
	__u32 weight; /* calls this sampled one stands for (1 without sampling) */
	__u32 generation; /* the duty-cycle window it entered in (struct syscall_sampling) */
};

/* Under an overhead budget 1 call in `period` is recorded (chosen at random on entry when
 * bpf_get_prandom_u32() < threshold = 2^32 / period) and weighs `period` in every sum, so the
 * counts are unbiased estimates. User space changes it while running; period 1 records every
 * call (exact counts). */
struct syscall_sampling {
	__u32 period;
	__u32 threshold;
	/* Duty cycling: the enter/exit programs are attached for 1/duty_weight of the time,
	 * in windows user space opens and closes; each call counted weighs duty_weight. A call
	 * is counted at its exit (every call exits once, so one seen with probability 1/duty
	 * is an unbiased sample); its latency only when its entry was seen in the same window
	 * (`generation`, raised by user space as each window opens), so a start left by a
	 * window whose exit was missed never pairs with a later call's exit. 0 or 1: not
	 * cycling. Not combined with `period` (one or the other is above 1). */
	__u32 duty_weight;
	__u32 generation;
	/* The window's planned end (CLOCK_MONOTONIC ns; 0: none): a call exiting after it is
	 * not counted, so a window user space closes late (a loaded machine) weighs no more
	 * than it was planned to. */
	__u64 window_end_ns;
};

#endif
