/* Stacks stored once each, exactly: a hash map from a 63-bit hash of the addresses to the
 * addresses themselves, compared in full on every hit. A STACK_TRACE map keeps one stack per
 * bucket and answers -EEXIST when two stacks' hashes meet in a bucket (a few percent of the
 * stacks of a busy system, and any one stack with some probability in every run); here two
 * stacks never share an id. The hash is the id that the other maps' keys carry.
 * Shared by mem.bpf.c and cpu.bpf.c; mirrored by StoredStack in Python. */
#ifndef OTLP_EBPF_STACK_STORE_H
#define OTLP_EBPF_STACK_STORE_H

#define STORED_STACK_DEPTH 127

struct stored_stack {
	__u32 nr;         /* addresses in ips, leaf first */
	__u32 pad;
	__u64 ips[STORED_STACK_DEPTH];
};

#ifdef __bpf__

#define STACK_NONE (-EFAULT)        /* no stack of that kind (a kernel thread's user stack) */
#define STACK_NOT_STORED (-EEXIST)  /* the table is full (or, never seen, a 63-bit clash) */

/* FNV-1a over whole addresses with a final fold; the top bit is cleared, as a negative id
 * means "no stack". */
static __always_inline s64 stored_stack_hash(const struct stored_stack *s)
{
	u64 h = 0xcbf29ce484222325ULL;

	for (u32 i = 0; i < STORED_STACK_DEPTH; i++) {
		if (i >= s->nr)
			break;
		h ^= s->ips[i];
		h *= 0x100000001b3ULL;
	}
	h ^= h >> 31;
	return (s64)(h >> 1);
}

static __always_inline bool same_stored_stack(const struct stored_stack *a,
					      const struct stored_stack *b)
{
	if (a->nr != b->nr)
		return false;
	for (u32 i = 0; i < STORED_STACK_DEPTH; i++) {
		if (i >= a->nr)
			break;
		if (a->ips[i] != b->ips[i])
			return false;
	}
	return true;
}

/* Read the current stack (flags as for bpf_get_stack) into `scratch`, which the caller owns
 * until it is stored. Returns the number of addresses, or STACK_NONE. */
static __always_inline long read_stack(void *ctx, struct stored_stack *scratch, u64 flags)
{
	long len = bpf_get_stack(ctx, scratch->ips, sizeof(scratch->ips), flags);

	if (len <= 0)
		return STACK_NONE;
	scratch->nr = len / sizeof(u64);
	scratch->pad = 0;
	return scratch->nr;
}

/* Store the stack in `scratch` in `stacks` unless it is there already. Returns its id
 * (>= 0) or STACK_NOT_STORED. */
static __always_inline s64 store_read_stack(void *stacks, struct stored_stack *scratch)
{
	struct stored_stack *stored;
	s64 id = stored_stack_hash(scratch);

	stored = bpf_map_lookup_elem(stacks, &id);
	if (!stored) {
		if (bpf_map_update_elem(stacks, &id, scratch, BPF_NOEXIST) == 0)
			return id;
		stored = bpf_map_lookup_elem(stacks, &id); /* stored meanwhile on another CPU */
		if (!stored)
			return STACK_NOT_STORED;
	}
	return same_stored_stack(stored, scratch) ? id : STACK_NOT_STORED;
}

/* Both: the id of the current stack (>= 0), STACK_NONE or STACK_NOT_STORED. */
static __always_inline s64 store_stack(void *ctx, void *stacks, struct stored_stack *scratch,
				       u64 flags)
{
	if (read_stack(ctx, scratch, flags) < 0)
		return STACK_NONE;
	return store_read_stack(stacks, scratch);
}

#endif /* __bpf__ */
#endif
