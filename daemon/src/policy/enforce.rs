//! Compiles the rule of each container into the kernel's enforcement maps (see
//! bpf/programs/src/policy.rs): per-cgroup flags and allow lists. Only enforce-mode rules with
//! a `block` or `kill` action reach the kernel.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, LpmTrie, MapData, lpm_trie::Key},
};
use ipnet::IpNet;
use sidewall_common::{CgroupAddr, PortKey, UNIX_PATH_MAX, destination, enforce};

use super::{
    detect,
    model::{Action, ContainerRule, Mode, Permission},
};

/// What one cgroup got, so it can be withdrawn exactly.
#[derive(Default, Clone, PartialEq, Eq, Debug)]
pub struct Compiled {
    pub flags: u32,
    pub connect: Vec<u16>,
    pub bind: Vec<u16>,
    pub egress: Vec<(u32, [u8; 16])>,
    /// The pod's own addresses (IPv4 as ::ffff:a.b.c.d), which loopback rules cover too;
    /// set only with `LOOPBACK`.
    pub local: Vec<[u8; 16]>,
}

impl Compiled {
    /// Whether the kernel refuses a connect or send to `ip:port` under these maps, for flows
    /// that already exist when the maps change: the decision `deny_destination` in
    /// bpf/programs/src/policy.rs makes (`sidewall_common::destination`), over this rule's
    /// lists instead of the maps.
    pub fn denies(&self, ip: IpAddr, port: u16) -> bool {
        destination::denies(
            self.flags,
            &v6_bytes(ip),
            port,
            |a| self.local.contains(a),
            |p| self.connect.contains(&p),
            |a| self.egress.iter().any(|(len, prefix)| prefix_matches(*len - 64, prefix, a)),
        )
    }
}

/// An address as the kernel's maps hold it: IPv4 as ::ffff:a.b.c.d.
pub fn v6_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// Whether the first `bits` bits of `prefix` and `addr` agree.
fn prefix_matches(bits: u32, prefix: &[u8; 16], addr: &[u8; 16]) -> bool {
    let (whole, rest) = ((bits / 8) as usize, bits % 8);
    if prefix[..whole] != addr[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        prefix[whole] & mask == addr[whole] & mask
    }
}

/// The kernel maps a rule compiles to, in enforce mode.
pub fn compile(mode: Mode, rule: &ContainerRule) -> Compiled {
    let mut c = Compiled::default();
    if mode != Mode::Enforce || rule.action == Action::Alert {
        return c;
    }
    if let Some(connect) = rule.loopback.as_ref().and_then(|l| l.connect.as_ref()) {
        // A rule that allows every port of some sibling cannot be a port list: leave it open.
        if connect.iter().all(|r| !r.ports.is_empty()) {
            c.flags |= enforce::LOOPBACK;
            c.connect = connect.iter().flat_map(|r| r.ports.iter().copied()).collect();
        }
    }
    if let Some(bind) = rule.loopback.as_ref().and_then(|l| l.bind.as_ref()) {
        c.flags |= enforce::BIND;
        c.bind = bind.clone();
    }
    if let Some(egress) = &rule.egress {
        c.flags |= enforce::EGRESS;
        c.egress = egress.iter().map(|e| lpm_prefix(&e.cidr)).collect();
    }
    if rule.loopback_routing == Permission::Deny {
        c.flags |= enforce::SYSCTL;
    }
    if rule.action == Action::Kill && rule.namespace_changes == Permission::Deny {
        c.flags |= enforce::KILL_NAMESPACE;
    }
    if rule.action == Action::Kill && rule.runtime_sockets == Permission::Deny {
        c.flags |= enforce::KILL_RUNTIME_SOCKET;
    }
    if rule.action == Action::Kill && rule.process_access == Permission::Deny {
        c.flags |= enforce::KILL_ACCESS;
    }
    c
}

/// An IPv4 range becomes its ::ffff:0:0/96 form; the cgroup id takes the first 64 bits.
fn lpm_prefix(net: &IpNet) -> (u32, [u8; 16]) {
    match net.network() {
        IpAddr::V4(a) => (64 + 96 + u32::from(net.prefix_len()), a.to_ipv6_mapped().octets()),
        IpAddr::V6(a) => (64 + u32::from(net.prefix_len()), a.octets()),
    }
}

pub struct Enforcer {
    flags: BpfHashMap<MapData, u64, u32>,
    connect: BpfHashMap<MapData, PortKey, u8>,
    bind: BpfHashMap<MapData, PortKey, u8>,
    egress: LpmTrie<MapData, CgroupAddr, u8>,
    local: BpfHashMap<MapData, CgroupAddr, u8>,
    home_mnt: BpfHashMap<MapData, u64, u32>,
    mnt_owner: BpfHashMap<MapData, u32, u64>,
    armed: BpfHashMap<MapData, u32, u8>,
    applied: HashMap<u64, Compiled>,
    pub known: HashSet<u64>,
}

impl Enforcer {
    pub fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let mut map = |name: &str| ebpf.take_map(name).with_context(|| format!("map {name} missing"));
        let mut sockets: BpfHashMap<MapData, [u8; UNIX_PATH_MAX], u8> =
            BpfHashMap::try_from(map("RUNTIME_SOCKETS")?)?;
        for path in detect::RUNTIME_SOCKETS {
            let mut key = [0u8; UNIX_PATH_MAX];
            key[..path.len()].copy_from_slice(path.as_bytes());
            sockets.insert(key, 1, 0).with_context(|| format!("listing runtime socket {path}"))?;
        }
        Ok(Self {
            flags: BpfHashMap::try_from(map("ENFORCE")?)?,
            connect: BpfHashMap::try_from(map("CONNECT_ALLOW")?)?,
            bind: BpfHashMap::try_from(map("BIND_ALLOW")?)?,
            egress: LpmTrie::try_from(map("EGRESS_ALLOW")?)?,
            local: BpfHashMap::try_from(map("LOCAL_ADDRS")?)?,
            home_mnt: BpfHashMap::try_from(map("HOME_MNT")?)?,
            mnt_owner: BpfHashMap::try_from(map("MNT_OWNER")?)?,
            armed: BpfHashMap::try_from(map("ARMED")?)?,
            applied: HashMap::new(),
            known: HashSet::new(),
        })
    }

    /// Makes the kernel's maps for `cgroup` say `c` (withdrawing what it said before).
    /// Returns whether they changed.
    pub fn apply(&mut self, cgroup: u64, c: Compiled) -> bool {
        self.known.insert(cgroup);
        if self.applied.get(&cgroup) == Some(&c) {
            return false;
        }
        self.withdraw(cgroup);
        let key = |port| PortKey { cgroup_id: cgroup, port, _pad: [0; 6] };
        for p in &c.connect {
            let _ = self.connect.insert(key(*p), 1, 0);
        }
        for p in &c.bind {
            let _ = self.bind.insert(key(*p), 1, 0);
        }
        for (len, addr) in &c.egress {
            let _ = self.egress.insert(&Key::new(*len, CgroupAddr { cgroup_id: cgroup, addr: *addr }), 1, 0);
        }
        for addr in &c.local {
            let _ = self.local.insert(CgroupAddr { cgroup_id: cgroup, addr: *addr }, 1, 0);
        }
        // Flags last: the allow lists are in place before enforcement starts.
        if c.flags != 0 {
            let _ = self.flags.insert(cgroup, c.flags, 0);
        }
        self.applied.insert(cgroup, c);
        true
    }

    /// What the kernel enforces for `cgroup`, if anything.
    pub fn applied(&self, cgroup: u64) -> Option<&Compiled> {
        self.applied.get(&cgroup)
    }

    pub fn forget(&mut self, cgroup: u64) {
        self.withdraw(cgroup);
        self.known.remove(&cgroup);
        if let Ok(mnt) = self.home_mnt.get(&cgroup, 0) {
            let _ = self.mnt_owner.remove(&mnt);
        }
        let _ = self.home_mnt.remove(&cgroup);
    }

    /// The container's own mount namespace: the kernel arms a process that execs in it, and
    /// names the container when a file of that namespace is opened from another.
    pub fn set_home(&mut self, cgroup: u64, mnt: u32) {
        if let Ok(old) = self.home_mnt.get(&cgroup, 0)
            && old != mnt
        {
            let _ = self.mnt_owner.remove(&old);
        }
        let _ = self.home_mnt.insert(cgroup, mnt, 0);
        let _ = self.mnt_owner.insert(mnt, cgroup, 0);
    }

    /// A process seen inside its container: it may be killed for namespace changes.
    pub fn arm(&mut self, pid: u32) {
        let _ = self.armed.insert(pid, 1, 0);
    }

    fn withdraw(&mut self, cgroup: u64) {
        let Some(old) = self.applied.remove(&cgroup) else { return };
        // Flags first: nothing is enforced against a half-removed list.
        let _ = self.flags.remove(&cgroup);
        let key = |port| PortKey { cgroup_id: cgroup, port, _pad: [0; 6] };
        for p in old.connect {
            let _ = self.connect.remove(&key(p));
        }
        for p in old.bind {
            let _ = self.bind.remove(&key(p));
        }
        for (len, addr) in old.egress {
            let _ = self.egress.remove(&Key::new(len, CgroupAddr { cgroup_id: cgroup, addr }));
        }
        for addr in old.local {
            let _ = self.local.remove(&CgroupAddr { cgroup_id: cgroup, addr });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{EgressRule, LoopbackRules, PortRule};

    #[test]
    fn only_enforcing_rules_reach_the_kernel() {
        let rule = ContainerRule {
            name: Some("proxy".into()),
            loopback: Some(LoopbackRules {
                connect: Some(vec![PortRule { container: Some("app".into()), ports: vec![8080, 8081] }]),
                bind: Some(vec![15001]),
                ..Default::default()
            }),
            egress: Some(vec![EgressRule { cidr: "10.0.0.0/8".parse().expect("net"), ports: vec![] }]),
            namespace_changes: Permission::Deny,
            runtime_sockets: Permission::Deny,
            process_access: Permission::Deny,
            action: Action::Kill,
            ..Default::default()
        };
        assert_eq!(compile(Mode::Monitor, &rule), Compiled::default());
        let c = compile(Mode::Enforce, &rule);
        assert_eq!(
            c.flags,
            enforce::LOOPBACK
                | enforce::BIND
                | enforce::EGRESS
                | enforce::KILL_NAMESPACE
                | enforce::KILL_RUNTIME_SOCKET
                | enforce::KILL_ACCESS
        );
        assert_eq!((c.connect.as_slice(), c.bind.as_slice()), (&[8080, 8081][..], &[15001][..]));
        let (len, addr) = c.egress[0];
        assert_eq!(len, 64 + 96 + 8);
        assert_eq!(&addr[10..13], &[0xff, 0xff, 10]);
        let alert_only = ContainerRule { action: Action::Alert, ..rule };
        assert_eq!(compile(Mode::Enforce, &alert_only).flags, 0);
    }

    #[test]
    fn existing_flows_are_judged_like_the_kernel_judges_connects() {
        let rule = ContainerRule {
            name: Some("proxy".into()),
            loopback: Some(LoopbackRules {
                connect: Some(vec![PortRule { container: None, ports: vec![8080] }]),
                bind: None,
                ..Default::default()
            }),
            egress: Some(vec![
                EgressRule { cidr: "10.1.0.0/16".parse().expect("net"), ports: vec![] },
                EgressRule { cidr: "2001:db8::/32".parse().expect("net"), ports: vec![] },
            ]),
            action: Action::Block,
            ..Default::default()
        };
        let c = compile(Mode::Enforce, &rule);
        let denies = |ip: &str, port| c.denies(ip.parse().expect("ip"), port);
        assert!(!denies("127.0.0.1", 8080) && !denies("::ffff:127.3.2.1", 8080) && !denies("::1", 8080));
        assert!(denies("127.0.0.1", 9090) && denies("::1", 9090) && denies("::ffff:127.0.0.1", 9090));
        assert!(!denies("10.1.200.3", 443) && !denies("::ffff:10.1.0.1", 443));
        assert!(denies("10.2.0.1", 443) && denies("192.168.1.1", 80));
        assert!(!denies("2001:db8:1::1", 443) && denies("2001:db9::1", 443));
        // The unspecified addresses and the pod's own reach the pod: loopback rules apply.
        assert!(denies("0.0.0.0", 9090) && denies("::", 9090) && denies("::ffff:0.0.0.0", 9090));
        assert!(!denies("0.0.0.0", 8080));
        let pod_ip = Compiled { local: vec![v6_bytes("10.88.0.7".parse().expect("ip"))], ..c.clone() };
        assert!(pod_ip.denies("10.88.0.7".parse().expect("ip"), 9090));
        assert!(!pod_ip.denies("10.88.0.7".parse().expect("ip"), 8080), "loopback list, not egress");
        // Nothing compiled (monitor mode, or no rule): nothing is denied.
        assert!(!Compiled::default().denies("127.0.0.1".parse().expect("ip"), 1));
    }
}
