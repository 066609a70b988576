/* Types shared by cpu_dwarf.bpf.c and collectors/cpu_dwarf.py (mirrored with ctypes there and
 * checked against this object's BTF in tests).
 *
 * One record per sample: who ran, the user registers an unwinder starts from, the kernel stack
 * when the sample interrupted the kernel, and a copy of the top of the user stack (from the user
 * stack pointer up, at most `stack_window` bytes). User space unwinds it with the CFI of each
 * mapping (symbolize/unwind.py). */
#ifndef OTLP_EBPF_CPU_DWARF_H
#define OTLP_EBPF_CPU_DWARF_H

#include "python.h"

#define DWARF_KSTACK_DEPTH 64
#define DWARF_MAX_WINDOW 32768 /* a power of two: the copy length is masked with it */
#define DWARF_PAGE 4096

/* x86_64: ip, sp, bp, 0.  arm64: pc, sp, fp (x29), lr (x30). */
#define DWARF_REG_PC 0
#define DWARF_REG_SP 1
#define DWARF_REG_FP 2
#define DWARF_REG_LR 3
#define DWARF_NREGS 4

enum dwarf_sample_flags {
	SAMPLE_IN_KERNEL = 1,     /* the timer hit kernel code; regs are the user regs at entry */
	SAMPLE_STACK_FAULT = 2,   /* the copy stopped early on unreadable memory (stack top) */
	SAMPLE_NO_USER_REGS = 4,  /* a kernel thread, a task past exit_mm, or no user regs */
	SAMPLE_PY_HELD = 8,       /* the process was stopped until user space decides (python.h) */
};

enum dwarf_drop {
	DWARF_DROP_RINGBUF_FULL = 0, /* no room in the ring buffer: the sample is lost */
	DWARF_DROP_NO_SCRATCH = 1,   /* per-CPU scratch buffer missing (never expected) */
	DWARF_DROP_SLOTS = 4,
};

struct dwarf_sample {
	__u32 pid; /* thread group id */
	__u32 tid;
	char comm[16];
	__u64 regs[DWARF_NREGS];
	__u32 flags;
	__u32 kstack_bytes; /* bytes of `kstack` filled (8 per frame) */
	__u32 stack_bytes;  /* bytes of `stack` filled, copied from regs[DWARF_REG_SP] up */
	__u32 pad;
	__u64 kstack[DWARF_KSTACK_DEPTH];
	struct py_stack py; /* Python frames when the process is a registered CPython */
	__u8 stack[DWARF_MAX_WINDOW];
};

#define DWARF_SAMPLE_HEADER_BYTES (sizeof(struct dwarf_sample) - DWARF_MAX_WINDOW)

#endif
