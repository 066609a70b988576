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

#define PROC_ERRNOS 64 /* (syscall, errno) rows per process (a power of two: masked index) */

struct errno_pair {
	__u32 nr;
	__u32 err;
};

/* Which (tgid, nr) and (tgid, nr, errno) entries a process created, so that its exit takes
 * them out of the tables without walking them. Errnos past PROC_ERRNOS distinct ones are
 * counted without their errno (DROP_ERRNO_FULL). */
struct proc_usage {
	__u64 nrs[MAX_SYSCALL_NR / 64];
	struct errno_pair errnos[PROC_ERRNOS];
	__u32 nerrnos; /* pairs claimed (may pass PROC_ERRNOS: the extra ones were refused) */
	__u32 pad;
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

/* A process whose last thread exited hands its rows to user space through the `exits` ring:
 * first this header, then exit_rows records holding `rows` rows in all and `errnos`
 * exit_errno records (interleaved with other processes' records, never reordered among its
 * own). The kernel sums each row's CPUs and deletes it, so user space makes no system call
 * per row of the churn it folds, and handles one record per EXIT_ROWS_PER_RECORD rows. */
enum exit_record_kind {
	EXIT_RECORD_PROCESS = 1,
	EXIT_RECORD_ROWS = 2,
	EXIT_RECORD_ERRNO = 3,
};

#define EXIT_ROWS_PER_RECORD 32

struct exit_event {
	__u32 kind; /* EXIT_RECORD_PROCESS */
	__u32 tgid;
	char comm[16];
	__u32 rows;   /* rows that follow, in exit_rows records */
	__u32 errnos; /* exit_errno records that follow */
	__u32 kept;   /* rows left in the tables for want of room in the ring (read at the end) */
	__u32 pad;
};

struct exit_row {
	__u32 nr;
	__u32 pad;
	struct syscall_stats stats; /* its CPUs summed; min the smallest nonzero, max the largest */
};

/* Sent as its header and its first `count` rows only. */
struct exit_rows {
	__u32 kind; /* EXIT_RECORD_ROWS */
	__u32 tgid;
	__u32 count;
	__u32 pad;
	struct exit_row rows[EXIT_ROWS_PER_RECORD];
};

struct exit_errno {
	__u32 kind; /* EXIT_RECORD_ERRNO */
	__u32 tgid;
	__u32 nr;
	__u32 err;
	__u64 count;
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
