//! A pod's TCP socket table, read from `/proc/<pid>/net/tcp` and `tcp6` of a process in
//! its network namespace: the ports it listens on (handed to the kernel so payload on
//! connections opened before the watch counts only when inbound) and the inbound
//! connections established at a moment (the endpoint's removal).

use std::{collections::BTreeSet, path::Path};

use agent_ebpf::Addr;

/// TCP states as `/proc/net/tcp` prints them (hex).
const ESTABLISHED: &str = "01";
const LISTEN: &str = "0A";

/// One socket: local address (as the maps key it), local port, state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketRow {
    pub local: Addr,
    pub port: u16,
    pub state: String,
}

/// The sockets of one network namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketTable {
    pub rows: Vec<SocketRow>,
}

impl SocketTable {
    /// Reads both tables of the namespace `pid` is in.
    pub fn of_pid(pid: u32) -> std::io::Result<Self> {
        let base = Path::new("/proc").join(pid.to_string()).join("net");
        let mut rows = parse(&std::fs::read_to_string(base.join("tcp"))?);
        // A kernel without IPv6 has no tcp6.
        if let Ok(v6) = std::fs::read_to_string(base.join("tcp6")) {
            rows.extend(parse(&v6));
        }
        Ok(Self { rows })
    }

    /// Ports listening on one of `addrs` or on the wildcard address.
    pub fn listening_ports(&self, addrs: &[Addr]) -> BTreeSet<u16> {
        self.rows
            .iter()
            .filter(|r| r.state == LISTEN && (is_wildcard(&r.local) || addrs.contains(&r.local)))
            .map(|r| r.port)
            .collect()
    }

    /// Established connections to one of `addrs` on a listening port: accepted ones.
    pub fn inbound_established(&self, addrs: &[Addr]) -> u64 {
        let ports = self.listening_ports(addrs);
        self.rows
            .iter()
            .filter(|r| {
                r.state == ESTABLISHED && addrs.contains(&r.local) && ports.contains(&r.port)
            })
            .count() as u64
    }
}

fn is_wildcard(a: &Addr) -> bool {
    let v4_any = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0];
    *a == [0; 16] || *a == v4_any
}

/// Rows of one table; lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<SocketRow> {
    text.lines().skip(1).filter_map(row).collect()
}

fn row(line: &str) -> Option<SocketRow> {
    let mut fields = line.split_whitespace();
    let _slot = fields.next()?;
    let local = fields.next()?;
    let _remote = fields.next()?;
    let state = fields.next()?.to_ascii_uppercase();
    let (addr, port) = local.split_once(':')?;
    Some(SocketRow {
        local: hex_addr(addr)?,
        port: u16::from_str_radix(port, 16).ok()?,
        state,
    })
}

/// The kernel prints addresses as 32-bit words in host byte order.
fn hex_addr(s: &str) -> Option<Addr> {
    let word = |w: &str| u32::from_str_radix(w, 16).ok().map(u32::to_ne_bytes);
    match s.len() {
        8 => {
            let v = word(s)?;
            Some([
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v[0], v[1], v[2], v[3],
            ])
        }
        32 => {
            let mut out = [0u8; 16];
            for (i, chunk) in out.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(s.get(i * 8..i * 8 + 8)?)?);
            }
            Some(out)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::addr_of;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0700010A:0050 0100010A:D431 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
   2: 0700010A:0050 0100010A:D432 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
   3: 0700010A:9C40 0200010A:1538 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 20 4 30 10 -1
   4: 0700010A:0050 0100010A:D433 06 00000000:00000000 00:00000000 00000000     0        0 0 3 0000000000000000
   garbage line
";
    const TCP6: &str =
        "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 0
   1: 0000000000000000FFFF00000700010A:1F90 0000000000000000FFFF00000100010A:C350 01 0
   2: 000080FE00000000FF000000010000FE:1F90 000080FE00000000FF000000020000FE:C351 01 0
";

    #[test]
    fn addresses_and_ports_parse_in_host_order() {
        let rows = parse(TCP);
        assert_eq!(rows.len(), 5, "{rows:?}");
        assert_eq!(rows[1].local, addr_of("10.1.0.7").unwrap());
        assert_eq!(rows[1].port, 80);
        let v6 = parse(TCP6);
        assert_eq!(v6[1].local, addr_of("10.1.0.7").unwrap(), "v4-mapped");
        assert_eq!(v6[2].local, addr_of("fe80::ff:fe00:1").unwrap());
        assert_eq!(v6[2].port, 8080);
    }

    #[test]
    fn inbound_means_established_on_a_listening_port_of_the_pod() {
        let mut t = SocketTable { rows: parse(TCP) };
        t.rows.extend(parse(TCP6));
        let pod = [addr_of("10.1.0.7").unwrap()];
        assert_eq!(
            t.listening_ports(&pod).into_iter().collect::<Vec<_>>(),
            [80, 8080]
        );
        // Two on :80 and one on :8080 (tcp6, v4-mapped); not the outbound one from
        // :40000, not the TIME_WAIT one.
        assert_eq!(t.inbound_established(&pod), 3);
        assert_eq!(
            t.inbound_established(&[addr_of("10.9.9.9").unwrap()]),
            0,
            "another pod's address"
        );
    }
}
