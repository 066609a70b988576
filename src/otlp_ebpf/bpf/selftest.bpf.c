/* A small end-to-end probe of the runtime: a tracepoint program that, for one process and one
 * syscall number, counts calls per CPU and per argument and sends each call through a ring
 * buffer with batched wakeups. `doctor` loads it; the runtime tests use it for a real round
 * trip through every map kind the collectors depend on. */
#include "core.h"
#include "counters.h"
#include "selftest.h"

char LICENSE[] SEC("license") = "GPL";

const volatile u32 probe_tgid = 0;
const volatile s64 probe_nr = -1;
/* Wake the consumer only when this many bytes are pending; it polls with a timeout anyway. */
const volatile u64 wakeup_bytes = 4096;
/* Only reached through ring buffer pointers otherwise: this keeps the type in the object's BTF
 * so tests can check the Python mirror against it. */
const volatile struct selftest_event selftest_event_layout = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} events SEC(".maps");

/* slot 0: calls seen, slot 1: ring buffer full */
COUNTER_ARRAY(counters, 2);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, u64);
	__type(value, u64);
} by_arg SEC(".maps");

SEC("tp/raw_syscalls/sys_enter")
int selftest_enter(struct trace_event_raw_sys_enter *ctx)
{
	long id = ctx->id;
	u64 arg0 = ctx->args[0];
	u64 pid_tgid = bpf_get_current_pid_tgid();
	struct selftest_event *ev;
	u64 one = 1, *n;
	u64 flags;

	if ((pid_tgid >> 32) != probe_tgid || id != probe_nr)
		return 0;
	bump(&counters, 0);
	n = bpf_map_lookup_elem(&by_arg, &arg0);
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		bpf_map_update_elem(&by_arg, &arg0, &one, BPF_NOEXIST);
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		bump(&counters, 1); /* ring buffer full: counted, never silent */
		return 0;
	}
	ev->pid = pid_tgid >> 32;
	ev->tid = (u32)pid_tgid;
	ev->nr = id;
	ev->arg0 = arg0;
	ev->seq = 0;
	flags = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	bpf_ringbuf_submit(ev, flags);
	return 0;
}
