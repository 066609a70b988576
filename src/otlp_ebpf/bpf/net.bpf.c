/* TCP connection lifecycle (tcplife style): one record per connection at close through a ring
 * buffer with batched wakeups; exact payload bytes from sock_send_length/sock_recv_length;
 * retransmitted segments and smoothed RTT from tcp_sock through CO-RE; resets per connection
 * and host-wide; packet drops counted by kernel drop reason. Tracepoints only: no kprobes.
 *
 * Ownership: an active connection belongs to the task that called connect() (SYN_SENT runs in
 * its context). An accepted one reaches ESTABLISHED in softirq context, where the current task
 * is arbitrary, so its owner is the first task that sends or receives on it, or failing that
 * the one that closes it (ESTABLISHED -> FIN_WAIT1 and CLOSE_WAIT -> LAST_ACK only happen in
 * close()/shutdown()). */
#include "core.h"
#include "target.h"
#include "counters.h"
#include "net.h"

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define MSG_PEEK 2
#define MSG_ERRQUEUE 0x2000

enum {
	TCP_ESTABLISHED = 1,
	TCP_SYN_SENT = 2,
	TCP_SYN_RECV = 3,
	TCP_FIN_WAIT1 = 4,
	TCP_CLOSE = 7,
	TCP_CLOSE_WAIT = 8,
	TCP_LAST_ACK = 9,
};

/* 0: any port; otherwise a connection is kept when its local or remote port matches. */
const volatile u16 targ_port = 0;
/* Wake the reader once this much is pending; below it, the reader's poll timeout collects. */
const volatile u64 wakeup_bytes = 256 * 1024;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NET_MAX_CONNECTIONS);
	__type(key, u64);
	__type(value, struct conn);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 * 1024 * 1024);
} events SEC(".maps");

COUNTER_ARRAY(lost, LOST_SLOTS);

COUNTER_ARRAY(counters, COUNTER_SLOTS);

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, NET_MAX_DROP_REASONS);
	__type(key, u32);
	__type(value, u64);
} drop_reasons SEC(".maps");

static __always_inline bool is_zero16(const u8 *a)
{
	u64 lo, hi;

	__builtin_memcpy(&lo, a, 8);
	__builtin_memcpy(&hi, a + 8, 8);
	return !lo && !hi;
}

static __always_inline bool port_wanted(const struct conn *c)
{
	return !targ_port || c->lport == targ_port || c->rport == targ_port;
}

/* Addresses and ports as the socket holds them now. Known values are never replaced by zeros:
 * an accepted socket learns its peer after its SYN_RECV state change, and unhashing on the way
 * to CLOSE clears the local port (inet_num) before the tracepoint fires. */
static __always_inline void read_endpoints(struct sock *sk, struct conn *c)
{
	u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	u16 lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	u16 rport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
	u8 laddr[16] = {}, raddr[16] = {};

	c->family = family;
	if (lport)
		c->lport = lport;
	if (rport)
		c->rport = rport;
	if (family == AF_INET) {
		u32 l4 = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		u32 r4 = BPF_CORE_READ(sk, __sk_common.skc_daddr);

		if (l4)
			__builtin_memcpy(c->laddr, &l4, 4);
		if (r4)
			__builtin_memcpy(c->raddr, &r4, 4);
		return;
	}
	BPF_CORE_READ_INTO(&laddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
	BPF_CORE_READ_INTO(&raddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	if (!is_zero16(laddr))
		__builtin_memcpy(c->laddr, laddr, 16);
	if (!is_zero16(raddr))
		__builtin_memcpy(c->raddr, raddr, 16);
}

/* Ports as the tracepoint saw them (inet_sport/inet_dport outlive inet_num). */
static __always_inline void note_ports(struct conn *c, u16 sport, u16 dport)
{
	if (sport)
		c->lport = sport;
	if (dport)
		c->rport = dport;
}

static __always_inline u32 total_retrans(struct sock *sk)
{
	return BPF_CORE_READ((struct tcp_sock *)sk, total_retrans);
}

static __always_inline u32 srtt_us(struct sock *sk)
{
	return BPF_CORE_READ((struct tcp_sock *)sk, srtt_us) >> 3; /* kept <<3 by the kernel */
}

static __always_inline void set_owner(struct conn *c, u64 pid_tgid)
{
	c->pid = pid_tgid >> 32;
	bpf_get_current_comm(c->comm, sizeof(c->comm));
	c->flags |= CONN_OWNER_KNOWN;
}

/* Start tracking `sk`; NULL (and a counted loss) when the table is full. */
static __always_inline struct conn *track(u64 sk, u8 flags, u8 state)
{
	struct conn fresh;

	__builtin_memset(&fresh, 0, sizeof(fresh));
	fresh.sk = sk;
	fresh.start_ns = bpf_ktime_get_ns();
	fresh.flags = flags;
	fresh.state = state;
	read_endpoints((struct sock *)sk, &fresh);
	if (!(flags & CONN_SEEN_START))
		fresh.retrans_base = total_retrans((struct sock *)sk);
	if (bpf_map_update_elem(&conns, &sk, &fresh, BPF_ANY)) {
		bump(&lost, LOST_CONN_TABLE_FULL);
		return NULL;
	}
	return bpf_map_lookup_elem(&conns, &sk);
}

/* The owner of an accepted socket shows itself by acting on it; a task that is not a target
 * means the connection is not ours to report. Returns false when it was forgotten. */
static __always_inline bool claim(struct conn *c, u64 sk, u64 pid_tgid)
{
	if (c->flags & CONN_OWNER_KNOWN)
		return true;
	if (!target_wanted(pid_tgid)) {
		bpf_map_delete_elem(&conns, &sk);
		return false;
	}
	set_owner(c, pid_tgid);
	return true;
}

static __always_inline long wakeup_flag(void)
{
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

static __always_inline void emit(struct conn *c)
{
	if (bpf_ringbuf_output(&events, c, sizeof(*c), wakeup_flag()))
		bump(&lost, LOST_RINGBUF_FULL);
	else
		bump(&counters, COUNTER_RECORDS);
}

/* CLOSE ends the connection but not the socket: the application may still read what arrived
 * before the peer's FIN, and an abortive close resets after it. Remember the end here; the
 * record leaves when the socket is destroyed. */
static __always_inline void on_close(u64 sk, struct conn *c, u16 sport, u16 dport)
{
	struct sock *s = (struct sock *)sk;

	read_endpoints(s, c);
	note_ports(c, sport, dport);
	c->end_ns = bpf_ktime_get_ns();
	c->state = TCP_CLOSE;
	c->retrans = total_retrans(s) - c->retrans_base;
	c->srtt_us = srtt_us(s);
}

/* Send the record (when it is wanted) and stop tracking the socket. */
static __always_inline void finish(u64 sk, struct conn *c)
{
	if (!c->end_ns)
		on_close(sk, c, 0, 0);
	if ((!targ_mode || (c->flags & CONN_OWNER_KNOWN)) && port_wanted(c)) {
		c->kind = EVENT_CLOSED;
		emit(c);
	}
	bpf_map_delete_elem(&conns, &sk);
}

static __always_inline void on_established(u64 sk, struct conn *c, int oldstate, u16 sport,
					   u16 dport)
{
	if (!c) {
		if (oldstate != TCP_SYN_RECV)
			return; /* an active connection that was not wanted at connect() */
		c = track(sk, CONN_PASSIVE | CONN_SEEN_START, TCP_ESTABLISHED);
		if (!c)
			return;
	} else {
		read_endpoints((struct sock *)sk, c);
	}
	note_ports(c, sport, dport);
	c->established_ns = bpf_ktime_get_ns();
	c->state = TCP_ESTABLISHED;
	if (!port_wanted(c))
		bpf_map_delete_elem(&conns, &sk);
}

SEC("tp/sock/inet_sock_set_state")
int handle_set_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	u64 sk = (u64)ctx->skaddr;
	int oldstate = ctx->oldstate;
	int newstate = ctx->newstate;
	u16 sport = ctx->sport;
	u16 dport = ctx->dport;
	u16 family = ctx->family;
	u16 protocol = ctx->protocol;
	u64 pid_tgid = bpf_get_current_pid_tgid();
	struct conn *c;

	if (protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6))
		return 0;
	if (newstate == TCP_SYN_SENT) {
		c = bpf_map_lookup_elem(&conns, &sk);
		if (c)
			finish(sk, c); /* connect() again on a socket whose last attempt failed */
		if (!target_wanted(pid_tgid))
			return 0;
		c = track(sk, CONN_SEEN_START, TCP_SYN_SENT);
		if (c)
			set_owner(c, pid_tgid);
		return 0;
	}
	c = bpf_map_lookup_elem(&conns, &sk);
	if (newstate == TCP_ESTABLISHED) {
		on_established(sk, c, oldstate, sport, dport);
		return 0;
	}
	if (!c)
		return 0;
	if (newstate == TCP_CLOSE) {
		on_close(sk, c, sport, dport);
		return 0;
	}
	/* Only close() and shutdown() take these two steps: the current task owns the socket. */
	if ((oldstate == TCP_ESTABLISHED && newstate == TCP_FIN_WAIT1) ||
	    (oldstate == TCP_CLOSE_WAIT && newstate == TCP_LAST_ACK)) {
		if (!claim(c, sk, pid_tgid))
			return 0;
	}
	c->state = newstate;
	return 0;
}

static __always_inline void count_payload(void *skp, u16 family, u16 protocol, int ret, int flags,
					  bool sent)
{
	u64 sk = (u64)skp;
	u64 pid_tgid;
	struct conn *c;
	u8 state;

	if (protocol != IPPROTO_TCP || ret <= 0 || (family != AF_INET && family != AF_INET6))
		return;
	if (!sent && (flags & (MSG_PEEK | MSG_ERRQUEUE)))
		return; /* peeked bytes are read again later; the error queue carries no payload */
	pid_tgid = bpf_get_current_pid_tgid();
	c = bpf_map_lookup_elem(&conns, &sk);
	if (!c) {
		/* Opened before the run: track it from now on, bytes counted from here. */
		if (!target_wanted(pid_tgid))
			return;
		state = BPF_CORE_READ((struct sock *)skp, __sk_common.skc_state);
		c = track(sk, 0, state);
		if (!c)
			return;
		if (!port_wanted(c)) {
			bpf_map_delete_elem(&conns, &sk);
			return;
		}
		set_owner(c, pid_tgid);
	} else if (!claim(c, sk, pid_tgid)) {
		return;
	}
	if (sent)
		__sync_fetch_and_add(&c->tx_bytes, ret);
	else
		__sync_fetch_and_add(&c->rx_bytes, ret);
	c->srtt_us = srtt_us((struct sock *)skp);
}

SEC("tp/sock/sock_send_length")
int handle_send_length(struct trace_event_raw_sock_msg_length *ctx)
{
	void *sk = ctx->sk;
	u16 family = ctx->family;
	u16 protocol = ctx->protocol;
	int ret = ctx->ret;
	int flags = ctx->flags;

	count_payload(sk, family, protocol, ret, flags, true);
	return 0;
}

SEC("tp/sock/sock_recv_length")
int handle_recv_length(struct trace_event_raw_sock_msg_length *ctx)
{
	void *sk = ctx->sk;
	u16 family = ctx->family;
	u16 protocol = ctx->protocol;
	int ret = ctx->ret;
	int flags = ctx->flags;

	count_payload(sk, family, protocol, ret, flags, false);
	return 0;
}

SEC("tp/tcp/tcp_retransmit_skb")
int handle_retransmit(struct trace_event_raw_tcp_retransmit_skb *ctx)
{
	u64 sk = (u64)ctx->skaddr;
	struct conn *c;

	bump(&counters, COUNTER_RETRANSMIT_SKBS);
	c = bpf_map_lookup_elem(&conns, &sk);
	if (!c)
		return 0;
	c->retrans_skbs += 1;
	/* total_retrans grows after this tracepoint: exact at close, one skb behind until then. */
	c->retrans = total_retrans((struct sock *)sk) - c->retrans_base;
	return 0;
}

SEC("tp/tcp/tcp_destroy_sock")
int handle_destroy(struct trace_event_raw_tcp_event_sk *ctx)
{
	u64 sk = (u64)ctx->skaddr;
	struct conn *c = bpf_map_lookup_elem(&conns, &sk);

	if (c)
		finish(sk, c);
	return 0;
}

SEC("tp/tcp/tcp_send_reset")
int handle_send_reset(struct trace_event_raw_tcp_send_reset *ctx)
{
	u64 sk = (u64)ctx->skaddr;
	struct conn *c;

	bump(&counters, COUNTER_RESETS_SENT);
	if (!sk)
		return 0; /* a reset for a segment no socket wanted (a closed port) */
	c = bpf_map_lookup_elem(&conns, &sk);
	if (c)
		c->resets_sent += 1;
	return 0;
}

SEC("tp/tcp/tcp_receive_reset")
int handle_receive_reset(struct trace_event_raw_tcp_event_sk *ctx)
{
	u64 sk = (u64)ctx->skaddr;
	struct conn *c;

	bump(&counters, COUNTER_RESETS_RECEIVED);
	c = bpf_map_lookup_elem(&conns, &sk);
	if (c)
		c->resets_received += 1;
	return 0;
}

SEC("tp/skb/kfree_skb")
int handle_kfree_skb(struct trace_event_raw_kfree_skb *ctx)
{
	u32 reason = ctx->reason;
	u64 one = 1, *n;

	if (reason <= 1) /* NOT_DROPPED_YET, CONSUMED: not a drop */
		return 0;
	n = bpf_map_lookup_elem(&drop_reasons, &reason);
	if (n) {
		*n += 1;
		return 0;
	}
	if (bpf_map_update_elem(&drop_reasons, &reason, &one, BPF_NOEXIST) == 0)
		return 0;
	/* Created meanwhile on another CPU: this CPU's slot of it is still to count. */
	n = bpf_map_lookup_elem(&drop_reasons, &reason);
	if (n)
		*n += 1;
	else
		bump(&lost, LOST_REASON_TABLE_FULL);
	return 0;
}
