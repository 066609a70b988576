/* Per (process, syscall): count, errors by errno, total/min/max latency and a log2 histogram,
 * aggregated in the kernel. tp_btf + task storage is the fast path; the raw_syscalls
 * tracepoints with a tid-keyed hash are the fallback where tp_btf is missing. User space
 * disables whichever pair it does not use. */
#include "core.h"
#include "target.h"
#include "counters.h"
#include "syscalls.h"

char LICENSE[] SEC("license") = "GPL";

#define ENOMEM 12

const volatile u32 errors_only = 0;
const volatile u32 filter_syscalls = 0;
const volatile u8 syscall_wanted[MAX_SYSCALL_NR] = {};
/* Calls that never return (exit, exit_group) are counted on entry. */
const volatile s64 nr_exit = -1;
const volatile s64 nr_exit_group = -1;

/* Not preallocated: a per-CPU value is 360 bytes per possible CPU, and the table is sized for
 * a busy system-wide run, most of which a targeted run never touches. Rows of exited
 * processes leave it (process_gone): the headroom covers the moments user space lags. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 32768);
	__type(key, struct syscall_key);
	__type(value, struct syscall_stats);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
	__type(key, struct errno_key);
	__type(value, u64);
} errnos SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, u32);
	__type(value, char[TASK_COMM_LEN]);
} comms SEC(".maps");

/* Processes gone whose rows the exits ring had no room for (process_gone): tgid -> name. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, u32);
	__type(value, char[TASK_COMM_LEN]);
} stranded SEC(".maps");

/* Calls that found no row of their own (the table full while user space lags behind a burst
 * of exits, or no memory for a new row at that instant): counted here by syscall, without
 * their process, so that no call is lost. Shared by every CPU: atomic adds. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SYSCALL_NR);
	__type(key, u32);
	__type(value, struct syscall_stats);
} unattributed SEC(".maps");

/* Per live process: the rows it created (one per process, like the rows themselves). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
	__type(key, u32);
	__type(value, struct proc_usage);
} usage SEC(".maps");

/* ~10 KB an exited process (its ~28 rows of 368 bytes): room for ~400, the exits of a second
 * or more of a host starting processes without pause, between two drains of user space. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} exits SEC(".maps");
/* Only reached through ring buffer pointers otherwise: this keeps the type in the object's BTF
 * so tests can check the Python mirror against it. */
const volatile struct exit_event exit_event_layout = {};
const volatile struct exit_rows exit_rows_layout = {};
const volatile struct exit_errno exit_errno_layout = {};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct syscall_start);
} start_storage SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, u32);
	__type(value, struct syscall_start);
} start_by_tid SEC(".maps");

COUNTER_ARRAY(drops, DROP_SLOTS);

/* Changed at run time by an overhead budget (an array, not .rodata, which is frozen at load). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct syscall_sampling);
} sampling SEC(".maps");

static __always_inline struct syscall_sampling *sampling_now(void)
{
	u32 zero = 0;

	return bpf_map_lookup_elem(&sampling, &zero);
}

/* How many calls this one stands for: 0 when it is not sampled, 1 without sampling. */
static __always_inline u64 sample_weight(struct syscall_sampling *s)
{
	if (!s)
		return 1;
	if (s->duty_weight > 1)
		return s->duty_weight;
	if (s->period <= 1)
		return 1;
	return bpf_get_prandom_u32() < s->threshold ? s->period : 0;
}

static __always_inline u32 generation_now(struct syscall_sampling *s)
{
	return s ? s->generation : 0;
}

static __always_inline bool duty_cycling(struct syscall_sampling *s)
{
	return s && s->duty_weight > 1;
}

/* Duty cycling, past the window's planned end: nothing more is counted in it. */
static __always_inline bool window_over(struct syscall_sampling *s)
{
	return duty_cycling(s) && s->window_end_ns && bpf_ktime_get_ns() > s->window_end_ns;
}

static __always_inline bool syscall_selected(long nr)
{
	if (nr < 0 || nr >= MAX_SYSCALL_NR)
		return !filter_syscalls;
	if (!filter_syscalls)
		return true;
	return syscall_wanted[nr & (MAX_SYSCALL_NR - 1)];
}

/* floor(log2(v)), 0 for 0: without a loop, which the verifier would walk. */
static __always_inline u32 log2_u64(u64 v)
{
	u32 r = 0, shift;

	shift = (v > 0xFFFFFFFF) << 5; v >>= shift; r = shift;
	shift = (v > 0xFFFF) << 4; v >>= shift; r |= shift;
	shift = (v > 0xFF) << 3; v >>= shift; r |= shift;
	shift = (v > 0xF) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3) << 1; v >>= shift; r |= shift;
	return r | (v >> 1);
}

static __always_inline u32 log2_slot(u64 v)
{
	u32 r = log2_u64(v);

	return r < SYSCALL_SLOTS ? r : SYSCALL_SLOTS - 1;
}

static __always_inline struct proc_usage *usage_of(u32 tgid)
{
	static const struct proc_usage empty = {};
	struct proc_usage *u = bpf_map_lookup_elem(&usage, &tgid);

	if (u)
		return u;
	bpf_map_update_elem(&usage, &tgid, &empty, BPF_NOEXIST);
	return bpf_map_lookup_elem(&usage, &tgid);
}

/* Note that the process owns a row: its exit takes the row out again. (Without room in
 * `usage` the row stays to the end of the run, still read then.) */
static __always_inline void note_row(u64 *bits, u32 bit)
{
	__sync_fetch_and_or(&bits[(bit / 64) & 63], 1ULL << (bit & 63));
}

static __always_inline struct syscall_stats *stats_for(u32 tgid, u32 nr)
{
	struct syscall_key key = { .tgid = tgid, .nr = nr };
	struct syscall_stats *st = bpf_map_lookup_elem(&stats, &key);
	static const struct syscall_stats zero = {};
	struct proc_usage *u;

	if (st)
		return st;
	long err = bpf_map_update_elem(&stats, &key, &zero, BPF_NOEXIST);

	if (err) {
		if (bpf_map_lookup_elem(&stats, &key) == NULL) {
			/* The table is not preallocated: a burst of new rows can find the kernel's
			 * per-CPU element cache empty before it is refilled (-ENOMEM), which is not
			 * a full table. */
			bump(&drops, err == -ENOMEM ? DROP_STATS_NOMEM : DROP_STATS_FULL);
			return NULL;
		}
	} else if ((u = usage_of(tgid))) {
		note_row(u->nrs, nr & (MAX_SYSCALL_NR - 1));
	}
	if (!bpf_map_lookup_elem(&comms, &tgid)) {
		char comm[TASK_COMM_LEN];

		bpf_get_current_comm(comm, sizeof(comm));
		bpf_map_update_elem(&comms, &tgid, comm, BPF_NOEXIST);
	}
	return bpf_map_lookup_elem(&stats, &key);
}

static __always_inline void record_unattributed(u64 nr, bool failed, u64 delta, bool timed,
						u64 w)
{
	u32 key = (u32)nr;
	struct syscall_stats *st;

	if (key >= MAX_SYSCALL_NR)
		return;
	st = bpf_map_lookup_elem(&unattributed, &key);
	if (!st)
		return;
	__sync_fetch_and_add(&st->count, w);
	if (failed)
		__sync_fetch_and_add(&st->errors, w);
	if (timed) {
		u32 slot = log2_slot(delta);

		__sync_fetch_and_add(&st->total_ns, delta * w);
		if (slot < SYSCALL_SLOTS)
			__sync_fetch_and_add(&st->hist[slot], w);
		/* min and max without a lock: a race costs at most one extreme of these rows. */
		if (delta > st->max_ns)
			st->max_ns = delta;
		if (!st->min_ns || delta < st->min_ns)
			st->min_ns = delta;
	}
}

/* List a process's new (syscall, errno) row for its exit; false when its list is full. */
static __always_inline bool note_errno(struct proc_usage *u, u32 nr, u32 err)
{
	u32 i = __sync_fetch_and_add(&u->nerrnos, 1);

	if (i >= PROC_ERRNOS)
		return false;
	u->errnos[i & (PROC_ERRNOS - 1)].nr = nr;
	u->errnos[i & (PROC_ERRNOS - 1)].err = err;
	return true;
}

/* The first call of a process to end in this errno: its row is created and listed. A row the
 * process's list has no room for is not kept (its calls counted, their errno unknown). */
static __always_inline void count_first_errno(u32 tgid, struct errno_key *ekey, u64 w)
{
	struct proc_usage *u = usage_of(tgid);
	u64 first = w, *n;

	if (u && u->nerrnos >= PROC_ERRNOS) {
		bump(&drops, DROP_ERRNO_FULL);
		return;
	}
	if (bpf_map_update_elem(&errnos, ekey, &first, BPF_NOEXIST) == 0) {
		/* Without `usage` room the row stays to the end of the run, still read then. */
		if (u && !note_errno(u, ekey->nr, ekey->err)) {
			bpf_map_delete_elem(&errnos, ekey);
			bump(&drops, DROP_ERRNO_FULL);
		}
		return;
	}
	/* Created meanwhile on another CPU: count in this CPU's slot. */
	n = bpf_map_lookup_elem(&errnos, ekey);
	if (n)
		*n += w;
	else
		bump(&drops, DROP_ERRNO_FULL);
}

/* `w`: the calls this one stands for (sampling); every sum weighs it, extremes do not. */
static __always_inline void record_exit(u32 tgid, u64 nr, long ret, u64 delta, bool timed, u64 w)
{
	struct syscall_stats *st;
	bool failed = ret < 0 && ret >= -4095;

	if (errors_only && !failed)
		return;
	st = stats_for(tgid, (u32)nr);
	if (!st) {
		record_unattributed(nr, failed, delta, timed, w);
		return;
	}
	st->count += w;
	if (timed) {
		st->total_ns += delta * w;
		if (delta > st->max_ns)
			st->max_ns = delta;
		if (!st->min_ns || delta < st->min_ns)
			st->min_ns = delta;
		u32 slot = log2_slot(delta);

		if (slot < SYSCALL_SLOTS)
			st->hist[slot] += w;
	}
	if (failed) {
		struct errno_key ekey = { .tgid = tgid, .nr = (u32)nr, .err = (u32)-ret, .pad = 0 };
		u64 *n;

		st->errors += w;
		n = bpf_map_lookup_elem(&errnos, &ekey);
		if (n) {
			*n += w;
		} else {
			count_first_errno(tgid, &ekey, w);
		}
	}
}

static __always_inline bool never_returns(long nr)
{
	return nr == nr_exit || nr == nr_exit_group;
}

/* Duty cycling: an exit seen in a window without the entry of the same window (the call
 * entered before the window opened, or the start is a missed exit's) is counted all the
 * same, without latency: counting every exit seen keeps the count unbiased. */
static __always_inline void count_exit_only(struct syscall_sampling *s, u64 pid_tgid, long nr,
					    long ret)
{
	if (!duty_cycling(s) || window_over(s) || !target_wanted(pid_tgid) || !syscall_selected(nr))
		return;
	record_exit(pid_tgid >> 32, nr, ret, 0, false, s->duty_weight);
}

SEC("tp_btf/sys_enter")
int BPF_PROG(btf_sys_enter, struct pt_regs *regs, long id)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	struct syscall_start *start;
	struct syscall_sampling *s = sampling_now();
	u64 w = sample_weight(s);

	/* Sampling first: under a budget most calls of every process stop here, cheaply. */
	if (!w || window_over(s))
		return 0; /* not sampled: its exit finds no start */
	if (!target_wanted(pid_tgid) || !syscall_selected(id))
		return 0;
	if (never_returns(id)) {
		record_exit(pid_tgid >> 32, id, 0, 0, false, w);
		return 0;
	}
	start = bpf_task_storage_get(&start_storage, bpf_get_current_task_btf(), 0,
				     BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!start) {
		bump(&drops, DROP_START_FULL);
		return 0;
	}
	start->nr = id;
	start->weight = w;
	start->generation = generation_now(s);
	start->ts = bpf_ktime_get_ns();
	return 0;
}

/* The number of the system call returning (its entry unseen). */
static __always_inline long syscall_nr_of(struct pt_regs *regs)
{
#if defined(__TARGET_ARCH_x86)
	return BPF_CORE_READ(regs, orig_ax);
#elif defined(__TARGET_ARCH_arm64)
	return BPF_CORE_READ(regs, syscallno);
#else
	return -1;
#endif
}

SEC("tp_btf/sys_exit")
int BPF_PROG(btf_sys_exit, struct pt_regs *regs, long ret)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	struct syscall_start *start;
	struct syscall_sampling *s = sampling_now();
	u64 ts;

	/* Only a target's sampled call left a start: most calls stop here. */
	start = bpf_task_storage_get(&start_storage, bpf_get_current_task_btf(), 0, 0);
	if (!start || !start->ts || start->generation != generation_now(s)) {
		if (start)
			start->ts = 0;
		/* not sampled, not a target, entered before we attached (or, duty cycling,
		 * before this window: counted without latency) */
		count_exit_only(s, pid_tgid, syscall_nr_of(regs), ret);
		return 0;
	}
	if (!target_wanted(pid_tgid) || window_over(s)) {
		start->ts = 0;
		return 0;
	}
	ts = start->ts;
	start->ts = 0;
	record_exit(pid_tgid >> 32, start->nr, ret, bpf_ktime_get_ns() - ts, true, start->weight);
	return 0;
}

SEC("tp/raw_syscalls/sys_enter")
int tp_sys_enter(struct trace_event_raw_sys_enter *ctx)
{
	long id = ctx->id;
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tid = (u32)pid_tgid;
	struct syscall_start start = {};
	struct syscall_sampling *s = sampling_now();

	if (!target_wanted(pid_tgid) || !syscall_selected(id))
		return 0;
	start.weight = window_over(s) ? 0 : sample_weight(s);
	start.generation = generation_now(s);
	if (!start.weight) {
		/* not sampled: a start an earlier sampled call left (its exit unseen) must not pair
		 * with this call's exit */
		bpf_map_delete_elem(&start_by_tid, &tid);
		return 0;
	}
	if (never_returns(id)) {
		record_exit(pid_tgid >> 32, id, 0, 0, false, start.weight);
		return 0;
	}
	start.nr = id;
	start.ts = bpf_ktime_get_ns();
	if (bpf_map_update_elem(&start_by_tid, &tid, &start, BPF_ANY))
		bump(&drops, DROP_START_FULL);
	return 0;
}

SEC("tp/raw_syscalls/sys_exit")
int tp_sys_exit(struct trace_event_raw_sys_exit *ctx)
{
	long ret = ctx->ret;
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tid = (u32)pid_tgid;
	struct syscall_start *start;
	struct syscall_sampling *s = sampling_now();
	u64 ts, nr, w;

	if (!target_wanted(pid_tgid))
		return 0;
	start = bpf_map_lookup_elem(&start_by_tid, &tid);
	if (!start || start->generation != generation_now(s)) {
		if (start)
			bpf_map_delete_elem(&start_by_tid, &tid);
		count_exit_only(s, pid_tgid, ctx->id, ret);
		return 0;
	}
	ts = start->ts;
	nr = start->nr;
	w = start->weight;
	bpf_map_delete_elem(&start_by_tid, &tid);
	if (window_over(s))
		return 0;
	record_exit(pid_tgid >> 32, nr, ret, bpf_ktime_get_ns() - ts, true, w);
	return 0;
}

/* A process is gone: its rows leave the tables for the `exits` ring (exit_event, then
 * exit_rows records of up to 32 rows and one exit_errno per errno it saw, struct exit_event in
 * syscalls.h), so the tables hold live processes only however many come and go. The kernel sums the
 * rows' CPUs here: user space, folding hundreds of processes a second on a churning host,
 * would otherwise pay system calls for every row. */

/* One exiting process's fold, walked with bpf_loop. Kept in a per-CPU map, not on the stack:
 * the verifier tracks stack values, and counters that change with every iteration would keep
 * it from seeing that a callback's states repeat (it would walk the nested loops out). */
struct fold {
	u32 tgid;
	u32 word;   /* the usage word being walked */
	u64 bits;   /* its bits not walked yet */
	u32 rows;   /* rows handed over */
	u32 errnos;
	u32 kept;   /* rows left in the tables */
	u32 pad;
	u64 errno_count;
	struct errno_key errno_key; /* the errno row being summed */
	struct exit_rows out;       /* rows summed, not sent yet (still in the table) */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct fold);
} folds SEC(".maps");

/* The possible CPUs (set at load): each row has one value per possible CPU. */
const volatile u32 possible_cpus = 1;

static __always_inline struct fold *this_fold(void)
{
	u32 zero = 0;

	return bpf_map_lookup_elem(&folds, &zero);
}

static long add_cpu_row(u32 cpu, void *unused)
{
	struct fold *f = this_fold();
	struct syscall_key key;
	struct syscall_stats *st, *sum;
	struct exit_row *row;

	if (!f)
		return 1;
	row = &f->out.rows[f->out.count & (EXIT_ROWS_PER_RECORD - 1)];
	key.tgid = f->tgid;
	key.nr = row->nr;
	st = bpf_map_lookup_percpu_elem(&stats, &key, cpu);
	if (!st)
		return 0;
	sum = &row->stats;
	sum->count += st->count;
	sum->errors += st->errors;
	sum->total_ns += st->total_ns;
	if (st->max_ns > sum->max_ns)
		sum->max_ns = st->max_ns;
	if (st->min_ns && (!sum->min_ns || st->min_ns < sum->min_ns))
		sum->min_ns = st->min_ns;
#pragma unroll
	for (int i = 0; i < SYSCALL_SLOTS; i++)
		sum->hist[i] += st->hist[i];
	return 0;
}

static long add_cpu_errno(u32 cpu, void *unused)
{
	struct fold *f = this_fold();
	u64 *n;

	if (!f)
		return 1;
	n = bpf_map_lookup_percpu_elem(&errnos, &f->errno_key, cpu);
	if (n)
		f->errno_count += *n;
	return 0;
}

/* The process's `i`th (syscall, errno) row, its CPUs summed. */
static long hand_errno(u32 i, void *unused)
{
	struct fold *f = this_fold();
	struct proc_usage *u;
	struct exit_errno out = { .kind = EXIT_RECORD_ERRNO };

	if (!f)
		return 1;
	u = bpf_map_lookup_elem(&usage, &f->tgid);
	if (!u)
		return 1;
	f->errno_key.tgid = f->tgid;
	f->errno_key.nr = u->errnos[i & (PROC_ERRNOS - 1)].nr;
	f->errno_key.err = u->errnos[i & (PROC_ERRNOS - 1)].err;
	f->errno_key.pad = 0;
	if (!bpf_map_lookup_elem(&errnos, &f->errno_key))
		return 0;
	f->errno_count = 0;
	bpf_loop(possible_cpus, add_cpu_errno, NULL, 0);
	out.tgid = f->tgid;
	out.nr = f->errno_key.nr;
	out.err = f->errno_key.err;
	out.count = f->errno_count;
	if (bpf_ringbuf_output(&exits, &out, sizeof(out), 0)) {
		f->kept++; /* stays in the table, taken by user space (stranded) */
		return 0;
	}
	bpf_map_delete_elem(&errnos, &f->errno_key);
	f->errnos++;
	return 0;
}

/* The rows summed in `out` have been sent: out of the table with them. */
static long delete_sent_row(u32 i, void *unused)
{
	struct fold *f = this_fold();
	struct syscall_key key;

	if (!f)
		return 1;
	key.tgid = f->tgid;
	key.nr = f->out.rows[i & (EXIT_ROWS_PER_RECORD - 1)].nr;
	bpf_map_delete_elem(&stats, &key);
	return 0;
}

/* Send the rows summed so far in one record; only then delete them from the table (without
 * room in the ring they stay there, read with the live rows at the end). */
static __always_inline void send_rows(struct fold *f)
{
	u32 n = f->out.count;

	if (n == 0)
		return;
	if (n > EXIT_ROWS_PER_RECORD)
		n = EXIT_ROWS_PER_RECORD;
	f->out.kind = EXIT_RECORD_ROWS;
	f->out.tgid = f->tgid;
	f->out.pad = 0;
	if (bpf_ringbuf_output(&exits, &f->out,
			       offsetof(struct exit_rows, rows) + n * sizeof(struct exit_row), 0)) {
		f->kept += n; /* they stay in the table, taken by user space (stranded) */
	} else {
		bpf_loop(n, delete_sent_row, NULL, 0);
		f->rows += n;
	}
	f->out.count = 0;
}

/* The process's next row in the current usage word, its CPUs summed into `out`. */
static long hand_row(u32 i, void *unused)
{
	struct fold *f = this_fold();
	struct syscall_key key;
	struct exit_row *row;
	u64 low;

	if (!f)
		return 1;
	low = f->bits & -f->bits;
	if (!low)
		return 1;
	f->bits ^= low;
	key.tgid = f->tgid;
	key.nr = f->word * 64 + log2_u64(low); /* the index of the bit */
	if (!bpf_map_lookup_elem(&stats, &key))
		return 0;
	row = &f->out.rows[f->out.count & (EXIT_ROWS_PER_RECORD - 1)];
	__builtin_memset(row, 0, sizeof(*row));
	row->nr = key.nr;
	bpf_loop(possible_cpus, add_cpu_row, NULL, 0);
	if (++f->out.count >= EXIT_ROWS_PER_RECORD)
		send_rows(f);
	return 0;
}

static long hand_row_word(u32 word, void *unused)
{
	struct fold *f = this_fold();
	struct proc_usage *u;

	if (!f)
		return 1;
	u = bpf_map_lookup_elem(&usage, &f->tgid);
	if (!u)
		return 1;
	f->bits = u->nrs[word & (MAX_SYSCALL_NR / 64 - 1)];
	f->word = word;
	if (f->bits)
		bpf_loop(64, hand_row, NULL, 0);
	return 0;
}

/* A process gone whose rows did not all fit in the ring: they stay in the tables, with the
 * process's `usage` (their keys), and user space takes them from there (its next read). */
static __always_inline void strand(u32 tgid)
{
	char comm[TASK_COMM_LEN];

	bump(&drops, DROP_EXIT_LOST);
	bpf_get_current_comm(comm, sizeof(comm));
	if (bpf_map_update_elem(&stranded, &tgid, comm, BPF_ANY))
		bpf_map_delete_elem(&usage, &tgid); /* no room to say so: read with the live rows */
}

SEC("tp/sched/sched_process_exit")
int process_gone(struct trace_event_raw_sched_process_exit *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tgid = pid_tgid >> 32;
	struct exit_event *event;
	struct proc_usage *u;
	struct fold *f;

	if (!process_exits(ctx, pid_tgid))
		return 0;
	bpf_map_delete_elem(&comms, &tgid);
	u = bpf_map_lookup_elem(&usage, &tgid);
	f = this_fold();
	if (!u || !f)
		return 0;
	/* Reserved first so that it reaches user space before the records it announces. */
	event = bpf_ringbuf_reserve(&exits, sizeof(*event), 0);
	if (!event) {
		strand(tgid);
		return 0;
	}
	f->tgid = tgid;
	f->rows = f->errnos = f->kept = 0;
	f->out.count = 0;
	bpf_loop(MAX_SYSCALL_NR / 64, hand_row_word, NULL, 0);
	send_rows(f);
	if (u->nerrnos)
		bpf_loop(u->nerrnos < PROC_ERRNOS ? u->nerrnos : PROC_ERRNOS, hand_errno, NULL, 0);
	event->kind = EXIT_RECORD_PROCESS;
	event->tgid = tgid;
	bpf_get_current_comm(event->comm, sizeof(event->comm));
	event->rows = f->rows;
	event->errnos = f->errnos;
	event->kept = f->kept;
	event->pad = 0;
	bpf_ringbuf_submit(event, 0);
	if (f->kept)
		strand(tgid);
	else
		bpf_map_delete_elem(&usage, &tgid);
	return 0;
}
