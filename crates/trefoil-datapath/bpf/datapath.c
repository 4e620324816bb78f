// SPDX-License-Identifier: Apache-2.0
//
// Trefoil's datapath: one tc ingress program per guarded interface that
// classifies each flow once against the operator's rules (first match wins)
// and then redirects it to a transparent listener, copies it to a
// function's interface, or drops it, recording the flow as it goes.
//
// One program for the three actions so a packet is parsed and classified
// once; the classification is cached per 5-tuple in the flow table, so the
// rule scan (at most MAX_RULES entries, in precedence order) runs on a
// flow's first packet and again only when the rules change. The layouts
// below are mirrored in src/abi.rs; change both together.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define MAX_RULES 1024
#define MAX_FLOWS 65536
// Rules live in two banks of MAX_RULES: the agent fills the idle bank and
// then flips `config`, so a packet never sees a half-written rule set.
#define RULE_SLOTS (2 * MAX_RULES)

#define ACTION_NONE 0
#define ACTION_REDIRECT 1
#define ACTION_COPY 2
#define ACTION_DROP 3

#define NO_RULE 0xffffffffu
// The fwmark that the agent's policy route sends to the local table, so a
// redirected packet addressed to another host is delivered to this one.
#define REDIRECT_MARK 0x7ef10000u

#define FLOW_LOCAL 1 // a local (redirected) socket owns this flow

struct rule {
	__u32 src[4];
	__u32 src_mask[4];
	__u32 dst[4];
	__u32 dst_mask[4];
	__u32 listen_addr[4];
	__u64 name_hash;
	__u32 id;
	__u32 copy_ifindex;
	__u16 port_lo; // host order
	__u16 port_hi; // host order
	__u16 listen_port; // network order
	__u8 protocol;
	__u8 family;
	__u8 action;
	__u8 pad[7];
};

struct flow_key {
	__u32 src[4];
	__u32 dst[4];
	__u16 sport; // network order
	__u16 dport; // network order
	__u8 protocol;
	__u8 family;
	__u8 pad[2];
};

struct flow {
	__u64 first_ns;
	__u64 last_ns;
	__u64 packets;
	__u64 bytes;
	__u64 name_hash;
	__u32 rule_id;
	__u32 generation;
	__u32 copy_ifindex;
	__u8 action;
	__u8 flags;
	__u8 pad[2];
};

struct counter {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RULE_SLOTS);
	__type(key, __u32);
	__type(value, struct rule);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} trefoil_rules SEC(".maps");

// One u64 so the flip is a single store: bits 0-15 the rule count of the
// active bank, bit 16 the active bank, bits 32-63 the generation.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} trefoil_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_RULES);
	__type(key, __u32);
	__type(value, struct counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} trefoil_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_FLOWS);
	__type(key, struct flow_key);
	__type(value, struct flow);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} trefoil_flows SEC(".maps");

struct scan {
	struct flow_key key;
	__u32 base;
	__u32 count;
	__u32 found;
};

static __always_inline int addr_matches(const __u32 *addr, const __u32 *net, const __u32 *mask)
{
	return (addr[0] & mask[0]) == net[0] && (addr[1] & mask[1]) == net[1] &&
	       (addr[2] & mask[2]) == net[2] && (addr[3] & mask[3]) == net[3];
}

static long scan_one(__u32 i, void *data)
{
	struct scan *s = data;
	if (i >= s->count)
		return 1;
	__u32 slot = s->base + i;
	struct rule *r = bpf_map_lookup_elem(&trefoil_rules, &slot);
	if (!r)
		return 1;
	if (r->family != s->key.family || r->protocol != s->key.protocol)
		return 0;
	__u16 port = bpf_ntohs(s->key.dport);
	if (port < r->port_lo || port > r->port_hi)
		return 0;
	if (!addr_matches(s->key.src, r->src, r->src_mask) || !addr_matches(s->key.dst, r->dst, r->dst_mask))
		return 0;
	s->found = slot;
	return 1;
}

static __always_inline struct rule *classify(const struct flow_key *key, __u64 cfg)
{
	struct scan s = {
		.key = *key,
		.base = ((cfg >> 16) & 1) ? MAX_RULES : 0,
		.count = cfg & 0xffff,
		.found = NO_RULE,
	};
	bpf_loop(MAX_RULES, scan_one, &s, 0);
	if (s.found == NO_RULE)
		return 0;
	return bpf_map_lookup_elem(&trefoil_rules, &s.found);
}

// Replies travel the other way: a copy rule for client -> server:80 also
// copies server:80 -> client, so a tap sees both halves of the flow.
static __always_inline struct rule *classify_reply(const struct flow_key *key, __u64 cfg)
{
	struct flow_key rev = *key;
	__builtin_memcpy(rev.src, key->dst, sizeof(rev.src));
	__builtin_memcpy(rev.dst, key->src, sizeof(rev.dst));
	rev.sport = key->dport;
	rev.dport = key->sport;
	struct rule *r = classify(&rev, cfg);
	if (r && r->action == ACTION_COPY)
		return r;
	return 0;
}

static __always_inline int parse(struct __sk_buff *skb, struct flow_key *key, __u8 *tcp_flags)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	void *l4;

	if ((void *)(eth + 1) > data_end)
		return -1;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end || ip->ihl < 5)
			return -1;
		key->family = 4;
		key->protocol = ip->protocol;
		// v4 addresses sit in the last word, as in a v4-mapped v6 address.
		key->src[2] = bpf_htonl(0xffff);
		key->dst[2] = bpf_htonl(0xffff);
		key->src[3] = ip->saddr;
		key->dst[3] = ip->daddr;
		// A later fragment has no ports: match on addresses only.
		if (ip->frag_off & bpf_htons(0x1fff))
			return 0;
		l4 = (void *)ip + ip->ihl * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return -1;
		key->family = 6;
		key->protocol = ip6->nexthdr;
		__builtin_memcpy(key->src, &ip6->saddr, 16);
		__builtin_memcpy(key->dst, &ip6->daddr, 16);
		l4 = ip6 + 1;
	} else {
		return -1;
	}
	if (key->protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;
		if ((void *)(tcp + 1) > data_end)
			return -1;
		key->sport = tcp->source;
		key->dport = tcp->dest;
		*tcp_flags = ((__u8 *)tcp)[13];
	} else if (key->protocol == IPPROTO_UDP) {
		struct udphdr *udp = l4;
		if ((void *)(udp + 1) > data_end)
			return -1;
		key->sport = udp->source;
		key->dport = udp->dest;
	}
	return 0;
}

#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

static __always_inline void fill_tuple(struct bpf_sock_tuple *t, const struct flow_key *key, const __u32 *daddr, __u16 dport)
{
	if (key->family == 4) {
		t->ipv4.saddr = key->src[3];
		t->ipv4.daddr = daddr[3];
		t->ipv4.sport = key->sport;
		t->ipv4.dport = dport;
	} else {
		__builtin_memcpy(t->ipv6.saddr, key->src, 16);
		__builtin_memcpy(t->ipv6.daddr, daddr, 16);
		t->ipv6.sport = key->sport;
		t->ipv6.dport = dport;
	}
}

static __always_inline __u32 tuple_size(const struct flow_key *key)
{
	struct bpf_sock_tuple t;
	return key->family == 4 ? sizeof(t.ipv4) : sizeof(t.ipv6);
}

// Whether a socket of this host already owns the flow (a connection the
// transparent listener accepted earlier): then its packets must keep being
// delivered locally even after the rule that redirected it is gone.
static __always_inline int owned_locally(struct __sk_buff *skb, const struct flow_key *key)
{
	struct bpf_sock_tuple t = {};
	fill_tuple(&t, key, key->dst, key->dport);
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, tuple_size(key), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	int owned = sk->state != BPF_TCP_LISTEN;
	bpf_sk_release(sk);
	return owned;
}

// Hands a new connection to the transparent listener; the connection keeps
// its original destination as its local address, which is how the proxy
// learns where to forward.
static __always_inline int assign_listener(struct __sk_buff *skb, const struct flow_key *key, const struct rule *r)
{
	struct bpf_sock_tuple t = {};
	fill_tuple(&t, key, r->listen_addr, r->listen_port);
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, tuple_size(key), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return -1;
	long err = -1;
	if (sk->state == BPF_TCP_LISTEN)
		err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	return err == 0 ? 0 : -1;
}

SEC("classifier")
int trefoil_ingress(struct __sk_buff *skb)
{
	__u32 zero = 0;
	__u64 *cfgp = bpf_map_lookup_elem(&trefoil_config, &zero);
	if (!cfgp)
		return TC_ACT_OK;
	__u64 cfg = *cfgp;
	__u32 generation = cfg >> 32;

	struct flow_key key = {};
	__u8 tcp_flags = 0;
	if (parse(skb, &key, &tcp_flags) < 0)
		return TC_ACT_OK;
	int new_connection = key.protocol == IPPROTO_TCP && (tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;

	__u64 now = bpf_ktime_get_ns();
	struct flow *f = bpf_map_lookup_elem(&trefoil_flows, &key);
	// No rules and no flow to keep (a proxied connection outliving its
	// rule): nothing to do, and no flow table entry spent on it.
	if (!f && (cfg & 0xffff) == 0)
		return TC_ACT_OK;
	struct rule *r = 0;
	if (!f || f->generation != generation || new_connection) {
		struct flow fresh = {.first_ns = now, .rule_id = NO_RULE};
		// A retransmitted SYN is the same connection: keep its history.
		if (f)
			fresh = *f;
		if (new_connection)
			fresh.flags = 0;
		int keep_redirect = f && !new_connection && f->action == ACTION_REDIRECT;
		r = classify(&key, cfg);
		if (!r)
			r = classify_reply(&key, cfg);
		if (!keep_redirect) {
			fresh.action = r ? r->action : ACTION_NONE;
			fresh.rule_id = r ? r->id : NO_RULE;
			fresh.name_hash = r ? r->name_hash : 0;
			fresh.copy_ifindex = r ? r->copy_ifindex : 0;
		}
		fresh.generation = generation;
		bpf_map_update_elem(&trefoil_flows, &key, &fresh, BPF_ANY);
		f = bpf_map_lookup_elem(&trefoil_flows, &key);
		if (!f)
			return TC_ACT_OK;
	}

	__sync_fetch_and_add(&f->packets, 1);
	__sync_fetch_and_add(&f->bytes, skb->len);
	f->last_ns = now;
	if (f->rule_id < MAX_RULES) {
		__u32 id = f->rule_id;
		struct counter *c = bpf_map_lookup_elem(&trefoil_counters, &id);
		if (c) {
			c->packets += 1;
			c->bytes += skb->len;
		}
	}

	switch (f->action) {
	case ACTION_DROP:
		return TC_ACT_SHOT;
	case ACTION_COPY:
		bpf_clone_redirect(skb, f->copy_ifindex, 0);
		return TC_ACT_OK;
	case ACTION_REDIRECT:
		// A SYN was always classified above, so `r` is its rule.
		if (new_connection) {
			if (!r || r->action != ACTION_REDIRECT)
				return TC_ACT_OK;
			// No transparent listener accepting (its proxy restarting):
			// the connection is refused rather than let around the chain
			// the rule sends it through; the client's SYN retry finds
			// the listener once it is back.
			if (assign_listener(skb, &key, r) < 0)
				return TC_ACT_SHOT;
			f->flags |= FLOW_LOCAL;
			skb->mark = REDIRECT_MARK;
			return TC_ACT_OK;
		}
		if ((f->flags & FLOW_LOCAL) || owned_locally(skb, &key)) {
			f->flags |= FLOW_LOCAL;
			skb->mark = REDIRECT_MARK;
		}
		return TC_ACT_OK;
	default:
		return TC_ACT_OK;
	}
}

char LICENSE[] SEC("license") = "Apache-2.0";
