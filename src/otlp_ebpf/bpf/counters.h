/* Per-CPU counter arrays: every program counts what it could not record (map full, ring
 * buffer full, stack not stored ...) in one, indexed by a reason enum of its own, and user
 * space sums the CPUs into `lost_events`. Nothing is dropped silently. */
#ifndef OTLP_EBPF_COUNTERS_H
#define OTLP_EBPF_COUNTERS_H

#include "core.h"

#define COUNTER_ARRAY(name, slots)                                                         \
	struct {                                                                           \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);                                   \
		__uint(max_entries, slots);                                                \
		__type(key, u32);                                                          \
		__type(value, u64);                                                        \
	} name SEC(".maps")

/* Per-CPU slots need no atomics: each CPU only ever adds to its own. */
static __always_inline void bump(void *array, u32 slot)
{
	u64 *n = bpf_map_lookup_elem(array, &slot);

	if (n)
		*n += 1;
}

/* Add one to the shared u64 count at `key` in hash `map`, creating it. Returns 1 when this
 * call created the entry, 0 when it was there (or another CPU created it meanwhile), -1 when
 * the table is full: the caller counts that drop in its own reason slot. */
static __always_inline int count_one(void *map, const void *key)
{
	u64 one = 1, *n = bpf_map_lookup_elem(map, key);

	if (!n) {
		if (bpf_map_update_elem(map, key, &one, BPF_NOEXIST) == 0)
			return 1;
		n = bpf_map_lookup_elem(map, key);
		if (!n)
			return -1;
	}
	__sync_fetch_and_add(n, 1);
	return 0;
}

#endif
