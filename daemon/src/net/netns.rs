//! Network namespaces: kernel netns cookies (what socket hooks see) to inodes (what /proc and
//! process events show), and the addresses that are local to a namespace (a pod's own IPs).

use std::{
    collections::HashMap,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

/// How long a namespace's address list is trusted before it is read again.
pub const ADDRS_TTL: Duration = Duration::from_secs(5);
const MAX_NETNS: usize = 16_384;

#[derive(Default)]
pub struct NetnsIndex {
    inode_of: HashMap<u64, u32>,
    cookie_of: HashMap<u32, u64>,
    addrs: HashMap<u32, (Instant, Vec<IpAddr>)>,
    /// A process whose /proc view of the namespace could be read last time: short-lived
    /// processes (a connect, then exit) are gone before their event is handled.
    reader: HashMap<u32, u32>,
}

impl NetnsIndex {
    pub fn learn(&mut self, cookie: u64, inode: u32) {
        if inode == 0 {
            return;
        }
        if self.inode_of.len() >= MAX_NETNS {
            self.inode_of.clear();
            self.cookie_of.clear();
        }
        self.inode_of.insert(cookie, inode);
        self.cookie_of.insert(inode, cookie);
    }

    pub fn inode(&self, cookie: u64) -> Option<u32> {
        self.inode_of.get(&cookie).copied()
    }

    /// The cookie of the namespace with this inode, as its sockets were last seen.
    pub fn cookie(&self, inode: u32) -> Option<u64> {
        self.cookie_of.get(&inode).copied()
    }

    /// `pid` acts in the namespace `inode`: a process to read its addresses through later.
    pub fn seen(&mut self, inode: u32, pid: u32) {
        if inode != 0 && !self.reader.contains_key(&inode) {
            self.reader.insert(inode, pid);
        }
    }

    /// Whether `ip` reaches the local stack of the namespace `pid` lives in.
    pub fn is_local(&mut self, inode: u32, pid: u32, ip: &IpAddr) -> bool {
        if super::addr::is_loopback(ip) {
            return true;
        }
        if ip.is_unspecified() {
            // connect(0.0.0.0) goes to the local host.
            return true;
        }
        let now = Instant::now();
        let fresh = self.addrs.get(&inode).is_some_and(|(t, _)| now.duration_since(*t) < ADDRS_TTL);
        if !fresh {
            if self.addrs.len() >= MAX_NETNS {
                self.addrs.clear();
                self.reader.clear();
            }
            let via = |p: u32| read_local_addrs(p).map(|a| (p, a));
            // The event's pid is the kernel's; /proc here may number it otherwise.
            let here = crate::kernel::tasks::local_pid(pid);
            // A failed read is not an answer: a stale list, if any, stays in use.
            if let Some((p, addrs)) =
                here.and_then(via).or_else(|| self.reader.get(&inode).and_then(|p| via(*p)))
            {
                self.addrs.insert(inode, (now, addrs));
                self.reader.insert(inode, p);
            }
        }
        self.addrs.get(&inode).is_some_and(|(_, a)| a.contains(ip))
    }
}

/// The addresses of the namespace `pid` is in, from its /proc view.
pub fn local_addrs(pid: u32) -> Vec<IpAddr> {
    read_local_addrs(pid).unwrap_or_default()
}

/// The same, None when `pid`'s view cannot be read (it exited).
fn read_local_addrs(pid: u32) -> Option<Vec<IpAddr>> {
    let fib = fs::read_to_string(format!("/proc/{pid}/net/fib_trie")).ok()?;
    let mut out = parse_fib_trie_local(&fib);
    // No IPv6 in the namespace: no such file.
    out.extend(parse_if_inet6(&fs::read_to_string(format!("/proc/{pid}/net/if_inet6")).unwrap_or_default()));
    Some(out)
}

/// The "/32 host LOCAL" entries of /proc/net/fib_trie: the IPv4 addresses of the namespace.
pub fn parse_fib_trie_local(text: &str) -> Vec<IpAddr> {
    let mut last: Option<Ipv4Addr> = None;
    let mut out = Vec::new();
    for line in text.lines() {
        let t = line.trim_start_matches([' ', '|', '+', '-']).trim();
        if let Ok(a) = t.parse::<Ipv4Addr>() {
            last = Some(a);
        } else if t.starts_with("/32 host LOCAL")
            && let Some(a) = last
            && !out.contains(&IpAddr::V4(a))
        {
            out.push(IpAddr::V4(a));
        }
    }
    out
}

/// /proc/net/if_inet6: "fe800000000000000000000000000001 02 40 20 80 eth0".
pub fn parse_if_inet6(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let hex = l.split_whitespace().next()?;
            let v = u128::from_str_radix(hex, 16).ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(v)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_process_gone_before_its_connect_is_judged_does_not_blind_the_namespace() {
        let me = std::process::id();
        let Some(ip) = local_addrs(me).into_iter().find(|ip| !ip.is_loopback()) else {
            panic!("this machine's namespace has no address besides loopback");
        };
        let gone = u32::MAX - 1;
        let mut idx = NetnsIndex::default();
        // Nothing known of the namespace, and its process is gone: no answer, and none kept.
        assert!(!idx.is_local(7, gone, &ip));
        assert!(idx.is_local(7, me, &ip), "a failed read was kept as an empty list");
        // Known through a process that was seen in it: a gone process is judged through it.
        let mut idx = NetnsIndex::default();
        idx.seen(8, me);
        assert!(idx.is_local(8, gone, &ip));
    }

    use super::*;

    #[test]
    fn fib_trie_local_addresses() {
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n\
                    \x20    +-- 10.244.1.0/24 2 0 2\n        |-- 10.244.1.7\n           /32 host LOCAL\n\
                    \x20    |-- 127.0.0.1\n        /32 host LOCAL\nLocal:\n     |-- 10.244.1.7\n           /32 host LOCAL\n";
        let got = parse_fib_trie_local(trie);
        assert_eq!(got, vec!["10.244.1.7".parse::<IpAddr>().expect("ip"), "127.0.0.1".parse().expect("ip")]);
    }

    #[test]
    fn if_inet6_addresses() {
        let got = parse_if_inet6("00000000000000000000000000000001 01 80 10 80       lo\n");
        assert_eq!(got, vec!["::1".parse::<IpAddr>().expect("ip")]);
    }

    #[test]
    fn own_namespace_addresses_are_local() {
        let mut idx = NetnsIndex::default();
        let me = std::process::id();
        assert!(idx.is_local(1, me, &"127.9.9.9".parse().expect("ip")));
        assert!(!idx.is_local(1, me, &"192.0.2.1".parse().expect("ip")), "TEST-NET-1 is nobody's");
    }
}
