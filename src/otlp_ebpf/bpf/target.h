/* Which tasks a collector records, shared by every program.
 *
 * targ_mode 0: everything except the tool itself; 1: only tgids in `targets` (seeded from
 * user space with --pid or the launched command, grown on fork so descendants follow).
 * targ_tid, when set, narrows to one thread; targ_comm to one process name. Filters are .rodata, set before load. */
#ifndef OTLP_EBPF_TARGET_H
#define OTLP_EBPF_TARGET_H

#include "core.h"
#include "counters.h"

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

/* slot 0: a child could not be added because `targets` was full */
COUNTER_ARRAY(target_drops, 1);

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

/* Children of a target become targets, so `-- CMD` and --pid follow their descendants. With
 * tp_btf the child's tgid is known: only new processes are added, never threads. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(follow_fork, struct task_struct *parent, struct task_struct *child)
{
	u32 parent_tgid = parent->tgid;
	u32 child_tgid = child->tgid;
	u8 one = 1;

	if (targ_mode == 0 || child_tgid == parent_tgid)
		return 0;
	if (!bpf_map_lookup_elem(&targets, &parent_tgid))
		return 0;
	if (bpf_map_update_elem(&targets, &child_tgid, &one, BPF_NOEXIST) &&
	    !bpf_map_lookup_elem(&targets, &child_tgid))
		bump(&target_drops, 0);
	return 0;
}

/* The same without tp_btf: the tracepoint does not say whether the child is a thread, so
 * every child id is added; forget_exited removes each again when it exits. */
SEC("tp/sched/sched_process_fork")
int follow_fork_tp(struct trace_event_raw_sched_process_fork *ctx)
{
	u32 parent = ctx->parent_pid;
	u32 child = ctx->child_pid;
	u32 parent_tgid = bpf_get_current_pid_tgid() >> 32;
	u8 one = 1;

	if (targ_mode == 0)
		return 0;
	if (!bpf_map_lookup_elem(&targets, &parent_tgid) && !bpf_map_lookup_elem(&targets, &parent))
		return 0;
	if (bpf_map_update_elem(&targets, &child, &one, BPF_NOEXIST) &&
	    !bpf_map_lookup_elem(&targets, &child))
		bump(&target_drops, 0);
	return 0;
}

/* A process that exits leaves room for the next: builds and test suites start far more
 * processes over a run than are alive at once. (A thread group whose leader exits first keeps
 * its other threads untracked from then on: rare, and the price of a bounded table.) */
SEC("tp/sched/sched_process_exit")
int forget_exited(struct trace_event_raw_sched_process_exit *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();

	if (targ_mode != 0)
		bpf_map_delete_elem(&targets, &tid);
	return 0;
}

/* The exiting thread is its process's last one (group_dead where the tracepoint has it; the
 * leader's exit otherwise). */
static __always_inline bool process_exits(struct trace_event_raw_sched_process_exit *ctx,
					  u64 pid_tgid)
{
	if (bpf_core_field_exists(ctx->group_dead))
		return ctx->group_dead;
	return (u32)pid_tgid == pid_tgid >> 32;
}

#endif
