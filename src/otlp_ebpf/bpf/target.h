/* Which tasks a collector records, shared by every program.
 *
 * targ_mode 0: everything except the tool itself; 1: only tgids in `targets` (seeded from
 * user space with --pid or the launched command, grown on fork so descendants follow).
 * targ_tid, when set, narrows to one thread; targ_comm to one process name. Filters are .rodata, set before load. */
#ifndef OTLP_EBPF_TARGET_H
#define OTLP_EBPF_TARGET_H

#include "core.h"

#define MAX_TARGETS 8192

const volatile u32 targ_mode = 0;
const volatile u32 targ_tid = 0;
const volatile u32 self_tgid = 0;
const volatile u32 targ_has_comm = 0;
const volatile char targ_comm[TASK_COMM_LEN] = {};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TARGETS);
	__type(key, u32);
	__type(value, u8);
} targets SEC(".maps");

static __always_inline bool comm_matches(void)
{
	char comm[TASK_COMM_LEN];

	bpf_get_current_comm(comm, sizeof(comm));
	for (int i = 0; i < TASK_COMM_LEN; i++) {
		if (comm[i] != targ_comm[i])
			return false;
		if (!comm[i])
			break;
	}
	return true;
}

static __always_inline bool target_wanted(u64 pid_tgid)
{
	u32 tgid = pid_tgid >> 32;
	u32 tid = (u32)pid_tgid;

	if (targ_tid && tid != targ_tid)
		return false;
	if (targ_has_comm && !comm_matches())
		return false;
	if (targ_mode == 0)
		return tgid != self_tgid;
	return bpf_map_lookup_elem(&targets, &tgid) != NULL;
}

/* Children of a target become targets, so `-- CMD` and --pid follow their descendants. */
SEC("tp/sched/sched_process_fork")
int follow_fork(struct trace_event_raw_sched_process_fork *ctx)
{
	u32 parent = ctx->parent_pid;
	u32 child = ctx->child_pid;
	u64 parent_tgid = bpf_get_current_pid_tgid() >> 32;
	u8 one = 1;

	if (targ_mode == 0)
		return 0;
	if (!bpf_map_lookup_elem(&targets, &parent_tgid) && !bpf_map_lookup_elem(&targets, &parent))
		return 0;
	bpf_map_update_elem(&targets, &child, &one, BPF_NOEXIST);
	return 0;
}

#endif
