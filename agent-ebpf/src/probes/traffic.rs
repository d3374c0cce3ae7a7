//! Traffic probes: inbound connections, payload and resets of terminating pods only.
//!
//! User space puts a pod's addresses in `WATCHED_ADDRS` when its deletion is seen and
//! takes them out when it is gone. Every probe first reads `WATCH_COUNT` (one array
//! slot): with no terminating pod on the node it returns there. Otherwise it reads the
//! socket's local address (two BTF-located loads) and looks it up; anything else returns
//! after that miss. Nothing is written to the ring: the counts live in `TRAFFIC` (per
//! CPU, so no atomics), one entry per watched address that user space created, so a busy pod cannot flood the
//! ring or grow a map, and nothing can be lost.
//!
//! Hooks (raw tracepoints, like the other probes, so no tracefs is needed):
//! - `sock:inet_sock_set_state` fires on every TCP state change (a handful per
//!   connection, never per packet): SYN_RECV → ESTABLISHED is a passive open, i.e. an
//!   accepted inbound connection, counted by the socket's local address.
//! - `tcp:tcp_probe` fires for each segment `tcp_rcv_established` handles, i.e. per
//!   received packet on an established socket: the one per-packet hook, hence the
//!   early returns. It carries the `sk_buff`, so payload = `skb->len` − TCP header.
//! - `tcp:tcp_send_reset` fires per RST the stack sends; a SYN to a port nobody listens
//!   on gets one with no socket (`sk` NULL), so the address is the incoming packet's
//!   destination, read from its IP header.

use agent_ebpf::{Addr, TrafficCounters, WatchMarks, MAX_WATCHED_ADDRS, MAX_WATCHED_PORTS};
use aya_ebpf::{
    helpers::generated,
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuHashMap},
    programs::RawTracePointContext,
};

use super::{conf, read_at};

#[map]
static WATCHED_ADDRS: HashMap<Addr, WatchMarks> = HashMap::with_max_entries(MAX_WATCHED_ADDRS, 0);

#[map]
static TRAFFIC: PerCpuHashMap<Addr, TrafficCounters> =
    PerCpuHashMap::with_max_entries(MAX_WATCHED_ADDRS, 0);

#[map]
static TRAFFIC_SOCKS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65536, 0);

#[map]
static WATCH_COUNT: Array<u32> = Array::with_max_entries(1, 0);

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const TCP_ESTABLISHED: u64 = 1;
const TCP_SYN_RECV: u64 = 3;
const TCP_CLOSE: u64 = 7;

#[inline(always)]
fn watching() -> bool {
    WATCH_COUNT.get(0).is_some_and(|n| *n != 0)
}

#[inline(always)]
fn v4_mapped(a: [u8; 4]) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// The socket's local address, for IPv4 and IPv6 sockets.
#[inline(always)]
fn sock_addr(sk: u64) -> Option<Addr> {
    let family: u16 = read_at(sk, conf!(offsets.skc_family)).ok()?;
    match family {
        AF_INET => read_at::<[u8; 4]>(sk, conf!(offsets.skc_rcv_saddr))
            .ok()
            .map(v4_mapped),
        AF_INET6 => read_at(sk, conf!(offsets.skc_v6_rcv_saddr)).ok(),
        _ => None,
    }
}

#[inline(always)]
fn now() -> u64 {
    unsafe { generated::bpf_ktime_get_boot_ns() }
}

/// Adds `n` to a counter (per CPU: no other CPU writes it, and a program is not
/// preempted on its CPU, so no atomics are needed).
#[inline(always)]
fn add(p: *mut u64, n: u64) {
    unsafe { *p += n };
}

/// Notes an occurrence at `t` in a (first, last) pair.
#[inline(always)]
fn seen(first: *mut u64, last: *mut u64, t: u64) {
    unsafe {
        if *first == 0 {
            *first = t;
        }
        *last = t;
    }
}

#[inline(always)]
fn after(mark: u64, t: u64) -> bool {
    mark != 0 && t >= mark
}

/// `sock:inet_sock_set_state`, TP_PROTO(const struct sock *sk, int oldstate, int newstate).
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    if !watching() {
        return 0;
    }
    let sk = ctx.arg::<u64>(0);
    let old = ctx.arg::<u64>(1) & 0xffff_ffff;
    let new = ctx.arg::<u64>(2) & 0xffff_ffff;
    let closing = new == TCP_CLOSE;
    if !closing && (old != TCP_SYN_RECV || new != TCP_ESTABLISHED) {
        return 0;
    }
    let Some(addr) = sock_addr(sk) else { return 0 };
    let Some(marks) = (unsafe { WATCHED_ADDRS.get(&addr) }) else {
        return 0;
    };
    if closing {
        // A socket seen opening is forgotten when it closes, so a later socket at the
        // same address (the memory reused) cannot inherit its time.
        let _ = TRAFFIC_SOCKS.remove(&sk);
        return 0;
    }
    let t = now();
    let _ = TRAFFIC_SOCKS.insert(&sk, &t, 0);
    let Some(c) = TRAFFIC.get_ptr_mut(&addr) else {
        return 0;
    };
    unsafe {
        if after(marks.removal_ns, t) {
            add(&raw mut (*c).conns_after_removal, 1);
            seen(
                &raw mut (*c).conn_removal_first_ns,
                &raw mut (*c).conn_removal_last_ns,
                t,
            );
        }
        if after(marks.sigterm_ns, t) {
            add(&raw mut (*c).conns_after_sigterm, 1);
            seen(
                &raw mut (*c).conn_sigterm_first_ns,
                &raw mut (*c).conn_sigterm_last_ns,
                t,
            );
        }
    }
    0
}

/// `tcp:tcp_probe`, TP_PROTO(struct sock *sk, struct sk_buff *skb): a segment received
/// on an established socket.
#[raw_tracepoint(tracepoint = "tcp_probe")]
pub fn tcp_probe(ctx: RawTracePointContext) -> i32 {
    if !watching() {
        return 0;
    }
    let sk = ctx.arg::<u64>(0);
    let Some(addr) = sock_addr(sk) else { return 0 };
    let Some(marks) = (unsafe { WATCHED_ADDRS.get(&addr) }) else {
        return 0;
    };
    let t = now();
    if !after(marks.removal_ns, t) {
        return 0;
    }
    let skb = ctx.arg::<u64>(1);
    let Ok(len) = read_at::<u32>(skb, conf!(offsets.skb_len)) else {
        return 0;
    };
    let Ok(data) = read_at::<u64>(skb, conf!(offsets.skb_data)) else {
        return 0;
    };
    // skb->data is the TCP header here; its length is the data offset (upper nibble of
    // byte 12) in 32-bit words.
    let Ok(doff) = read_at::<u8>(data, 12) else {
        return 0;
    };
    let header = u32::from(doff >> 4) * 4;
    if len <= header {
        return 0; // a bare ACK
    }
    let payload = u64::from(len - header);
    let opened = unsafe { TRAFFIC_SOCKS.get(&sk) }.copied();
    let keepalive = match opened {
        Some(at) => at < marks.removal_ns,
        None => {
            // Not seen opening: open since before the watch. Inbound only if its local
            // port is one the pod listens on (when those are known).
            let Ok(port) = read_at::<u16>(sk, conf!(offsets.skc_num)) else {
                return 0;
            };
            if !listens(&marks.ports, port) {
                return 0;
            }
            true
        }
    };
    let Some(c) = TRAFFIC.get_ptr_mut(&addr) else {
        return 0;
    };
    unsafe {
        add(&raw mut (*c).bytes_after_removal, payload);
        seen(&raw mut (*c).data_first_ns, &raw mut (*c).data_last_ns, t);
        if keepalive {
            add(&raw mut (*c).keepalive_bytes, payload);
            seen(
                &raw mut (*c).keepalive_first_ns,
                &raw mut (*c).keepalive_last_ns,
                t,
            );
        }
    }
    0
}

#[inline(always)]
fn listens(ports: &[u16; MAX_WATCHED_PORTS], port: u16) -> bool {
    let mut known = false;
    let mut i = 0;
    while i < MAX_WATCHED_PORTS {
        if ports[i] == port && port != 0 {
            return true;
        }
        known |= ports[i] != 0;
        i += 1;
    }
    !known
}

/// `tcp:tcp_send_reset`, TP_PROTO(const struct sock *sk, const struct sk_buff *skb[,
/// enum sk_rst_reason reason]): the stack sends a RST, in answer to `skb` when there is
/// one (then `sk` may be NULL: no socket at all), else on `sk` (an abort).
#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: RawTracePointContext) -> i32 {
    if !watching() {
        return 0;
    }
    let sk = ctx.arg::<u64>(0);
    let skb = ctx.arg::<u64>(1);
    let addr = if skb != 0 {
        packet_destination(skb)
    } else if sk != 0 {
        sock_addr(sk)
    } else {
        None
    };
    let Some(addr) = addr else { return 0 };
    let Some(marks) = (unsafe { WATCHED_ADDRS.get(&addr) }) else {
        return 0;
    };
    let t = now();
    if !after(marks.exit_ns, t) {
        return 0;
    }
    let Some(c) = TRAFFIC.get_ptr_mut(&addr) else {
        return 0;
    };
    unsafe {
        add(&raw mut (*c).resets_after_exit, 1);
        seen(&raw mut (*c).reset_first_ns, &raw mut (*c).reset_last_ns, t);
    }
    0
}

/// The destination address of a received packet, from its IP header.
#[inline(always)]
fn packet_destination(skb: u64) -> Option<Addr> {
    let head: u64 = read_at(skb, conf!(offsets.skb_head)).ok()?;
    let nh: u16 = read_at(skb, conf!(offsets.skb_network_header)).ok()?;
    let ip = head + u64::from(nh);
    let version: u8 = read_at(ip, 0).ok()?;
    match version >> 4 {
        4 => read_at::<[u8; 4]>(ip, 16).ok().map(v4_mapped),
        6 => read_at(ip, 24).ok(),
        _ => None,
    }
}
