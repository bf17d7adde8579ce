//! Port ownership per network namespace: which process (so which container) bound each TCP
//! and UDP port, on which address. A loopback connect is attributed to the owner of its
//! destination port.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use crate::process::ProcEntry;

#[derive(Clone, Debug)]
pub struct Binding {
    pub ip: IpAddr,
    pub cookie: u64,
    pub owner: Arc<ProcEntry>,
}

type Key = (u64, u8, u16);

#[derive(Default)]
pub struct PortTable {
    by_port: HashMap<Key, Vec<Binding>>,
    by_cookie: HashMap<u64, Key>,
}

/// Bindings remembered at most; past it the oldest namespace's are dropped first.
const MAX_BINDINGS: usize = 131_072;

impl PortTable {
    pub fn bind(&mut self, netns: u64, proto: u8, port: u16, b: Binding) {
        if self.by_cookie.len() >= MAX_BINDINGS {
            self.by_port.clear();
            self.by_cookie.clear();
        }
        let key = (netns, proto, port);
        self.by_cookie.insert(b.cookie, key);
        let list = self.by_port.entry(key).or_default();
        list.retain(|x| x.cookie != b.cookie);
        list.push(b);
    }

    pub fn release(&mut self, cookie: u64) {
        let Some(key) = self.by_cookie.remove(&cookie) else {
            return;
        };
        if let Some(list) = self.by_port.get_mut(&key) {
            list.retain(|b| b.cookie != cookie);
            if list.is_empty() {
                self.by_port.remove(&key);
            }
        }
    }

    /// The socket that receives traffic for `ip:port` in `netns`: an exact-address binding
    /// wins over a wildcard one, as in the kernel's own lookup.
    pub fn owner(&self, netns: u64, proto: u8, ip: &IpAddr, port: u16) -> Option<&Binding> {
        let list = self.by_port.get(&(netns, proto, port))?;
        list.iter()
            .rev()
            .find(|b| b.ip == *ip)
            .or_else(|| list.iter().rev().find(|b| b.ip.is_unspecified() && (b.ip.is_ipv6() || ip.is_ipv4())))
    }

    pub fn len(&self) -> usize {
        self.by_cookie.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_cookie.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{clock::Clock, process::ProcessCache};
    use sidewall_common::Header;

    fn owner(pid: u32) -> Arc<ProcEntry> {
        let mut c = ProcessCache::new("n", Clock::new(), std::time::Duration::from_secs(1));
        c.lookup(&Header { pid, ..Default::default() })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn exact_beats_wildcard_and_release_forgets() {
        let mut t = PortTable::default();
        t.bind(1, 6, 8080, Binding { ip: ip("0.0.0.0"), cookie: 10, owner: owner(100) });
        t.bind(1, 6, 8080, Binding { ip: ip("127.0.0.1"), cookie: 11, owner: owner(101) });
        let pid = |b: Option<&Binding>| b.map(|b| b.owner.process.pid);
        assert_eq!(pid(t.owner(1, 6, &ip("127.0.0.1"), 8080)), Some(101));
        assert_eq!(pid(t.owner(1, 6, &ip("127.0.0.2"), 8080)), Some(100), "wildcard catches the rest");
        assert_eq!(pid(t.owner(2, 6, &ip("127.0.0.1"), 8080)), None, "other namespace");
        assert_eq!(pid(t.owner(1, 17, &ip("127.0.0.1"), 8080)), None, "other protocol");
        t.release(11);
        assert_eq!(pid(t.owner(1, 6, &ip("127.0.0.1"), 8080)), Some(100));
        t.release(10);
        assert!(t.is_empty());
    }

    #[test]
    fn v6_wildcard_takes_v4_but_not_the_reverse() {
        let mut t = PortTable::default();
        t.bind(1, 6, 80, Binding { ip: ip("::"), cookie: 1, owner: owner(1) });
        assert!(t.owner(1, 6, &ip("127.0.0.1"), 80).is_some());
        let mut t = PortTable::default();
        t.bind(1, 6, 80, Binding { ip: ip("0.0.0.0"), cookie: 1, owner: owner(1) });
        assert!(t.owner(1, 6, &ip("::1"), 80).is_none());
    }
}
