/* Types shared by selftest.bpf.c and its users (doctor, runtime tests). */
#ifndef OTLP_EBPF_SELFTEST_H
#define OTLP_EBPF_SELFTEST_H

struct selftest_event {
	__u32 pid;
	__u32 tid;
	__u64 nr;
	__u64 arg0;
	__u64 seq;
};

#endif
