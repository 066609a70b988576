/* Types shared by net.bpf.c and collectors/net.py (mirrored with ctypes there and checked
 * against this object's BTF in tests), then the kernel types net.bpf.c reads through CO-RE.
 * Only the fields read are declared; libbpf relocates each against the running kernel. */
#ifndef OTLP_EBPF_NET_H
#define OTLP_EBPF_NET_H

#define NET_MAX_CONNECTIONS 32768
#define NET_MAX_DROP_REASONS 1024

enum net_lost {
	LOST_RINGBUF_FULL = 0,   /* a closed connection's record found no room: it is not reported */
	LOST_CONN_TABLE_FULL = 1, /* a connection could not be tracked at all */
	LOST_REASON_TABLE_FULL = 2, /* a packet drop could not be counted under its reason */
	LOST_SLOTS = 4,
};

enum net_counter {
	COUNTER_RESETS_SENT = 0,
	COUNTER_RESETS_RECEIVED = 1,
	COUNTER_RETRANSMIT_SKBS = 2,
	COUNTER_RECORDS = 3,
	COUNTER_SLOTS = 4,
};

enum conn_flag {
	CONN_PASSIVE = 1,       /* accepted (SYN_RECV), not connected from here */
	CONN_OWNER_KNOWN = 2,   /* pid/comm are the opener's or the accepter's */
	CONN_SEEN_START = 4,    /* the handshake was seen; otherwise it predates the run */
};

enum conn_event_kind {
	EVENT_CLOSED = 1,       /* a connection's full record, sent when its socket is destroyed */
};

/* One tracked connection (map value) and the record sent at close (ring buffer). */
struct conn {
	__u64 sk;               /* kernel socket address: the map key */
	__u64 start_ns;         /* CLOCK_MONOTONIC: handshake start, or first activity seen */
	__u64 established_ns;
	__u64 end_ns;           /* when it reached CLOSE; 0 while open */
	__u64 tx_bytes;         /* payload the application sent (sock_send_length ret) */
	__u64 rx_bytes;         /* payload the application received (sock_recv_length ret) */
	__u32 pid;
	__u32 retrans;          /* segments: tcp_sock.total_retrans minus retrans_base */
	__u32 retrans_base;
	__u32 retrans_skbs;     /* tcp_retransmit_skb events (one per skb, GSO undercounts) */
	__u32 srtt_us;
	__u16 resets_sent;
	__u16 resets_received;
	__u16 family;
	__u16 lport;
	__u16 rport;
	__u8 state;             /* last TCP state seen */
	__u8 flags;             /* enum conn_flag */
	__u8 kind;              /* enum conn_event_kind (records only) */
	__u8 pad[7];
	__u8 laddr[16];
	__u8 raddr[16];
	char comm[16];
};

/* Kernel types read through CO-RE (net.bpf.c only). */
struct in6_addr {
	union {
		__u8 u6_addr8[16];
	} in6_u;
} __attribute__((preserve_access_index));

struct sock_common {
	union {
		struct {
			__be32 skc_daddr;
			__be32 skc_rcv_saddr;
		};
	};
	union {
		struct {
			__be16 skc_dport;
			__u16 skc_num;
		};
	};
	unsigned short skc_family;
	volatile unsigned char skc_state;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
} __attribute__((preserve_access_index));

struct tcp_sock {
	__u32 srtt_us;
	__u32 total_retrans;
} __attribute__((preserve_access_index));

struct trace_event_raw_inet_sock_set_state {
	struct trace_entry ent;
	const void *skaddr;
	int oldstate;
	int newstate;
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u16 protocol;
	__u8 saddr[4];
	__u8 daddr[4];
	__u8 saddr_v6[16];
	__u8 daddr_v6[16];
} __attribute__((preserve_access_index));

struct trace_event_raw_sock_msg_length {
	struct trace_entry ent;
	void *sk;
	__u16 family;
	__u16 protocol;
	int ret;
	int flags;
} __attribute__((preserve_access_index));

struct trace_event_raw_tcp_retransmit_skb {
	struct trace_entry ent;
	const void *skbaddr;
	const void *skaddr;
} __attribute__((preserve_access_index));

struct trace_event_raw_tcp_send_reset {
	struct trace_entry ent;
	const void *skbaddr;
	const void *skaddr;
} __attribute__((preserve_access_index));

struct trace_event_raw_tcp_event_sk {
	struct trace_entry ent;
	const void *skaddr;
} __attribute__((preserve_access_index));

/* Any enum matches the kernel's under CO-RE; only the field's size and offset matter. */
enum skb_drop_reason {
	SKB_DROP_REASON_NOT_SPECIFIED = 2,
};

struct trace_event_raw_kfree_skb {
	struct trace_entry ent;
	void *skbaddr;
	enum skb_drop_reason reason;
} __attribute__((preserve_access_index));

#endif
