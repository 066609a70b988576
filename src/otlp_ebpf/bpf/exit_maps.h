/* The code mappings of a sampled process, recorded by the kernel as the process exits.
 *
 * A process living a few milliseconds is often gone before user space has read its samples,
 * and with it /proc/PID/maps: its samples could be neither unwound nor named. Since 6.16 the
 * sched_process_exit tracepoint fires before the exiting task drops its memory, so the
 * collectors record there, for a process they sampled, each executable mapping (start, end,
 * file offset, device and inode of the file, and its path as the dentry chain names it), the
 * stack mapping and the vDSO. User space unwinds and names the process's samples with them,
 * reopening each file by (device, inode) among the files it already holds, or by the path.
 *
 * Types shared with collectors/exit_maps.py (mirrored with ctypes there, checked against
 * the object's BTF in tests). Included by cpu.bpf.c and cpu_dwarf.bpf.c. */
#ifndef OTLP_EBPF_EXIT_MAPS_H
#define OTLP_EBPF_EXIT_MAPS_H

#include "core.h"

#define EXIT_MAPS_MAX 32   /* mappings per record (a power of two: the slot index is masked) */
#define EXIT_MAPS_PATH 256 /* bytes of path per mapping (a power of two, as above) */
#define EXIT_MAPS_DEPTH 24 /* path components walked, mount points included */
#define VM_EXEC_FLAG 0x4UL
#define PAGE_SHIFT_BITS 12

enum exit_mapping_flags {
	EXIT_MAP_EXEC = 1,      /* executable */
	EXIT_MAP_STACK = 2,     /* holds mm->start_stack: the main thread's stack */
	EXIT_MAP_VDSO = 4,      /* the vDSO (no file; its image is the same in every process) */
	EXIT_MAP_PATH_CUT = 8,  /* the path did not fit, or its walk did not reach the root */
};

/* One mapping. `path` holds the path's components leaf first, each ending in a NUL, and an
 * empty component after the last ("libc.so.6\0x86_64-linux-gnu\0lib\0usr\0\0"): the walk goes
 * from the file up to the root. */
struct exit_mapping {
	__u64 start;
	__u64 end;
	__u64 offset; /* in the file, bytes */
	__u64 inode;
	__u32 dev; /* the kernel's encoding: major << 20 | minor */
	__u32 flags;
	char path[EXIT_MAPS_PATH];
};

struct exit_maps {
	__u32 pid;
	__u32 count;         /* mappings filled in `maps` */
	__u64 start_boottime; /* ns after boot, as /proc/PID/stat's start time counts it */
	__u32 more;          /* mappings left out for want of room */
	__u32 pad;
	struct exit_mapping maps[EXIT_MAPS_MAX];
};

#define EXIT_MAPS_HEADER_BYTES (sizeof(struct exit_maps) - EXIT_MAPS_MAX * sizeof(struct exit_mapping))

/* Kernel types read here (CO-RE relocated). */
struct qstr {
	const unsigned char *name;
} __attribute__((preserve_access_index));

struct dentry {
	struct dentry *d_parent;
	struct qstr d_name;
} __attribute__((preserve_access_index));

struct vfsmount {
	struct dentry *mnt_root;
} __attribute__((preserve_access_index));

struct mount {
	struct mount *mnt_parent;
	struct dentry *mnt_mountpoint;
	struct vfsmount mnt;
} __attribute__((preserve_access_index));

struct path {
	struct vfsmount *mnt;
	struct dentry *dentry;
} __attribute__((preserve_access_index));

struct super_block {
	u32 s_dev;
} __attribute__((preserve_access_index));

struct inode {
	unsigned long i_ino;
	struct super_block *i_sb;
} __attribute__((preserve_access_index));

struct file {
	struct path f_path;
	struct inode *f_inode;
} __attribute__((preserve_access_index));

struct mm_context_exit {
	void *vdso;
} __attribute__((preserve_access_index));

struct mm_struct {
	unsigned long start_stack;
	struct mm_context_exit context;
} __attribute__((preserve_access_index));

struct vm_area_struct {
	unsigned long vm_start;
	unsigned long vm_end;
	unsigned long vm_flags;
	unsigned long vm_pgoff;
	struct file *vm_file;
} __attribute__((preserve_access_index));

struct task_struct___exit {
	struct mm_struct *mm;
	u64 start_boottime;
} __attribute__((preserve_access_index));

struct bpf_iter_task_vma {
	__u64 __opaque[1];
} __attribute__((aligned(8)));

extern int bpf_iter_task_vma_new(struct bpf_iter_task_vma *it, struct task_struct *task,
				 __u64 addr) __ksym __weak;
extern struct vm_area_struct *bpf_iter_task_vma_next(struct bpf_iter_task_vma *it) __ksym __weak;
extern void bpf_iter_task_vma_destroy(struct bpf_iter_task_vma *it) __ksym __weak;

/* The record is built here: too big for the BPF stack. One slot per CPU (a tracepoint runs
 * with preemption off; the sampling programs use their own scratch). The slack after the
 * record lets the verifier prove that a path component read at any offset of the last slot's
 * path stays inside the value; what spills there is never sent. */
struct exit_maps_scratch {
	struct exit_maps rec;
	char slack[EXIT_MAPS_PATH];
	u64 files[EXIT_MAPS_MAX]; /* struct file * of each mapping, for the path pass */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct exit_maps_scratch);
} exit_maps_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1024 * 1024);
} exit_maps SEC(".maps");

/* slot 0: a record did not fit in the ring buffer */
COUNTER_ARRAY(exit_maps_drops, 1);

/* Where a path walk stands (the state of path_step, one call per component). */
struct path_walk {
	u64 dentry;
	u64 vfsmount;
	u64 mount;
	u64 mnt_offset; /* of `mnt` in struct mount */
	u32 slot;       /* the mapping whose path this is */
	u32 off;        /* bytes of its path written */
	u32 done;       /* 1: reached the root; 2: cut short */
};

/* One step up the dentry chain, as d_path goes: a name, or a mount point crossed. Each step is
 * a bpf_loop call, so the verifier checks one step and not every path through the walk. */
static long path_step(u32 i, struct path_walk *w)
{
	u32 zero = 0, off = w->off;
	struct exit_maps_scratch *buf = bpf_map_lookup_elem(&exit_maps_scratch, &zero);
	struct dentry *d = (struct dentry *)w->dentry;
	struct mount *mnt = (struct mount *)w->mount;
	struct vfsmount *vmnt = (struct vfsmount *)w->vfsmount;
	struct dentry *root = BPF_CORE_READ(vmnt, mnt_root);
	struct dentry *parent = BPF_CORE_READ(d, d_parent);
	u32 slot = w->slot;
	char *out;
	long n;

	if (!buf)
		return 1;
	asm volatile("" : "+r"(slot));
	out = buf->rec.maps[slot & (EXIT_MAPS_MAX - 1)].path;
	if (d == root || d == parent) {
		struct mount *up = BPF_CORE_READ(mnt, mnt_parent);

		if (d != root || up == mnt || !up) {
			out[off & (EXIT_MAPS_PATH - 1)] = 0; /* the root of the mount tree */
			w->done = 1;
			return 1;
		}
		w->dentry = (u64)BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mount = (u64)up;
		w->vfsmount = (u64)up + w->mnt_offset;
		return 0;
	}
	if (off >= EXIT_MAPS_PATH - 1) {
		w->done = 2;
		return 1;
	}
	n = bpf_probe_read_kernel_str(out + (off & (EXIT_MAPS_PATH - 1)), EXIT_MAPS_PATH,
				      BPF_CORE_READ(d, d_name.name));
	if (n <= 1 || off + n > EXIT_MAPS_PATH - 1) {
		w->done = 2;
		return 1;
	}
	/* The mask changes nothing (off + n < EXIT_MAPS_PATH) but keeps the verifier from
	 * following every offset: with it, each step starts from the same range. */
	off = (off + n) & (EXIT_MAPS_PATH - 1);
	asm volatile("" : "+r"(off));
	w->off = off;
	w->dentry = (u64)parent;
	return 0;
}

/* The path of `f` into mapping `slot`'s path (components leaf first, see struct
 * exit_mapping); false when it was cut short. */
static __always_inline bool file_path(struct file *f, u32 slot)
{
	struct path_walk w = {};
	u64 vmnt = (u64)BPF_CORE_READ(f, f_path.mnt);

	w.mnt_offset = bpf_core_field_offset(struct mount, mnt);
	w.dentry = (u64)BPF_CORE_READ(f, f_path.dentry);
	w.vfsmount = vmnt;
	w.mount = vmnt - w.mnt_offset;
	w.slot = slot;
	bpf_loop(EXIT_MAPS_DEPTH, path_step, &w, 0);
	return w.done == 1;
}

/* bpf_loop callback: the path of the file of mapping `i` (a pass of its own, after the walk
 * over the mappings: nested in it, the verifier would follow every path of both loops). */
static long path_of_mapping(u32 i, void *unused)
{
	u32 zero = 0;
	struct exit_maps_scratch *buf = bpf_map_lookup_elem(&exit_maps_scratch, &zero);
	struct exit_mapping *m;
	struct file *f;

	if (!buf || i >= EXIT_MAPS_MAX)
		return 1;
	/* Keep the mask: the compiler drops it after the check, and the verifier needs it. */
	asm volatile("" : "+r"(i));
	i &= EXIT_MAPS_MAX - 1;
	m = &buf->rec.maps[i];
	f = (struct file *)buf->files[i];
	m->path[0] = 0;
	if (f && !file_path(f, i))
		m->flags |= EXIT_MAP_PATH_CUT;
	return 0;
}

/* Record the current process's code mappings (and its stack and vDSO) into `exit_maps`. Call
 * it at sched_process_exit of the last thread, for a process whose samples need them. */
static __always_inline void send_exit_maps(u32 tgid)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct task_struct___exit *t = (void *)task;
	struct bpf_iter_task_vma it;
	struct vm_area_struct *vma;
	struct exit_maps_scratch *buf;
	struct exit_maps *rec;
	struct mm_struct *mm;
	u64 vdso, stack, size;
	u32 zero = 0, n;

	mm = BPF_CORE_READ(t, mm);
	if (!mm)
		return; /* before 6.16 the memory is gone by this tracepoint */
	buf = bpf_map_lookup_elem(&exit_maps_scratch, &zero);
	if (!buf)
		return;
	rec = &buf->rec;
	rec->pid = tgid;
	rec->start_boottime = BPF_CORE_READ(t, start_boottime);
	rec->count = 0;
	rec->more = 0;
	rec->pad = 0;
	vdso = (u64)BPF_CORE_READ(mm, context.vdso);
	stack = BPF_CORE_READ(mm, start_stack);
	bpf_iter_task_vma_new(&it, task, 0);
	while ((vma = bpf_iter_task_vma_next(&it))) {
		struct exit_mapping *m;
		u64 start = BPF_CORE_READ(vma, vm_start), end = BPF_CORE_READ(vma, vm_end);
		u32 flags = 0;
		struct file *f;

		if (BPF_CORE_READ(vma, vm_flags) & VM_EXEC_FLAG)
			flags |= EXIT_MAP_EXEC;
		if (start <= stack && stack < end)
			flags |= EXIT_MAP_STACK;
		if (start == vdso)
			flags |= EXIT_MAP_VDSO;
		if (!flags)
			continue;
		/* The count lives in the map, not in a register: to the verifier every pass of the
		 * loop then starts alike, and it checks the body once instead of once per count. */
		n = *(volatile u32 *)&rec->count;
		if (n >= EXIT_MAPS_MAX) {
			rec->more++;
			continue;
		}
		m = &rec->maps[n & (EXIT_MAPS_MAX - 1)];
		m->start = start;
		m->end = end;
		m->offset = BPF_CORE_READ(vma, vm_pgoff) << PAGE_SHIFT_BITS;
		m->inode = 0;
		m->dev = 0;
		m->flags = flags;
		f = BPF_CORE_READ(vma, vm_file);
		if (f && (flags & EXIT_MAP_VDSO))
			f = NULL;
		if (f) {
			m->inode = BPF_CORE_READ(f, f_inode, i_ino);
			m->dev = BPF_CORE_READ(f, f_inode, i_sb, s_dev);
		}
		/* Only code needs its file found again; the stack's path would be "". */
		buf->files[n & (EXIT_MAPS_MAX - 1)] = (flags & EXIT_MAP_EXEC) ? (u64)f : 0;
		rec->count = n + 1;
	}
	bpf_iter_task_vma_destroy(&it);
	n = *(volatile u32 *)&rec->count;
	if (n > EXIT_MAPS_MAX)
		n = EXIT_MAPS_MAX;
	bpf_loop(n, path_of_mapping, NULL, 0);
	size = EXIT_MAPS_HEADER_BYTES + (u64)n * sizeof(struct exit_mapping);
	if (size > sizeof(struct exit_maps))
		size = sizeof(struct exit_maps);
	if (bpf_ringbuf_output(&exit_maps, rec, size, BPF_RB_NO_WAKEUP))
		bump(&exit_maps_drops, 0);
}

#endif
