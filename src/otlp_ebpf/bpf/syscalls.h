/* Types shared by syscalls.bpf.c and collectors/syscalls.py (mirrored with ctypes there and
 * checked against this object's BTF in tests). */
#ifndef OTLP_EBPF_SYSCALLS_H
#define OTLP_EBPF_SYSCALLS_H

#define SYSCALL_SLOTS 40
#define MAX_SYSCALL_NR 1024

enum syscalls_drop {
	DROP_STATS_FULL = 0,   /* (tgid, nr) table full: the call is not counted */
	DROP_ERRNO_FULL = 1,   /* (tgid, nr, errno) table full: counted, errno unknown */
	DROP_START_FULL = 2,   /* no room to remember a start time: counted without latency */
	DROP_SLOTS = 4,
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
};

#endif
