//! Cuts established TCP connections that the rules now in the kernel forbid. The cgroup hooks
//! judge connects, so a connection opened before its container's rule tightened would outlive
//! the rule; after such a change the daemon lists the TCP sockets of the container's network
//! namespace (sock_diag) and destroys each one the kernel would now refuse to open.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::unix::fs::MetadataExt as _,
};

use sidewall_common::wire::{TCP_CLOSE_WAIT, TCP_ESTABLISHED, TCP_LISTEN};

use super::enforce::Compiled;
use crate::{
    identity::Identity,
    net::sockdiag::{DiagSocket, SockDiag},
};

/// A connection that was cut, and the container (cgroup) that had opened it.
#[derive(Debug)]
pub struct Cut {
    pub cgroup: u64,
    pub socket: DiagSocket,
}

/// The connections among `sockets` opened from a cgroup to a destination `rule_of` that
/// cgroup denies. An accepted socket (its local address is a listener's) is the far end of
/// someone's connect, judged at that end, never here.
pub fn forbidden<'a>(
    sockets: &'a [DiagSocket],
    rule_of: impl Fn(u64) -> Option<&'a Compiled>,
) -> Vec<&'a DiagSocket> {
    let listeners: Vec<&DiagSocket> = sockets.iter().filter(|s| s.state == TCP_LISTEN).collect();
    let accepted = |s: &DiagSocket| {
        listeners.iter().any(|l| {
            l.local.port() == s.local.port()
                && (l.local.ip().is_unspecified()
                    || l.local.ip().to_canonical() == s.local.ip().to_canonical())
        })
    };
    sockets
        .iter()
        .filter(|s| s.state != TCP_LISTEN && !accepted(s))
        .filter(|s| rule_of(s.cgroup_id).is_some_and(|c| c.denies(s.remote.ip(), s.remote.port())))
        .collect()
}

/// Finds what `cgroups`' rules (`rule_of`) forbid, in each of their network namespaces, and
/// cuts it if `destroy` (monitor mode only reports it).
pub fn sweep<'a>(
    identity: &Identity,
    cgroups: &HashSet<u64>,
    rule_of: impl Fn(u64) -> Option<&'a Compiled> + Copy,
    destroy: bool,
) -> Vec<Cut> {
    let mut cuts = Vec::new();
    for (netns, members) in namespaces_of(identity, cgroups) {
        match cut_in(&netns, &members, rule_of, destroy) {
            Ok(mut c) => cuts.append(&mut c),
            Err(e) => tracing::warn!(error = %e, "could not list or cut the connections of a pod"),
        }
    }
    cuts
}

fn cut_in<'a>(
    netns: &File,
    members: &HashSet<u64>,
    rule_of: impl Fn(u64) -> Option<&'a Compiled>,
    destroy: bool,
) -> std::io::Result<Vec<Cut>> {
    let mut diag = SockDiag::open_in(netns)?;
    let states = 1 << TCP_ESTABLISHED | 1 << TCP_CLOSE_WAIT | 1 << TCP_LISTEN;
    let sockets = diag.tcp_sockets(states)?;
    let rule = |cgroup| members.contains(&cgroup).then(|| rule_of(cgroup)).flatten();
    let mut cuts = Vec::new();
    for s in forbidden(&sockets, rule) {
        if !destroy {
            cuts.push(Cut { cgroup: s.cgroup_id, socket: s.clone() });
            continue;
        }
        match diag.destroy(s) {
            Ok(()) => cuts.push(Cut { cgroup: s.cgroup_id, socket: s.clone() }),
            // Closed meanwhile: nothing left to cut.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => tracing::warn!(error = %e, remote = %s.remote, "could not cut a connection"),
        }
    }
    Ok(cuts)
}

/// The network namespaces of `cgroups` (through a process of each), with the cgroups in each.
fn namespaces_of(identity: &Identity, cgroups: &HashSet<u64>) -> Vec<(File, HashSet<u64>)> {
    let mut by_inode: HashMap<u64, (File, HashSet<u64>)> = HashMap::new();
    for &cgroup in cgroups {
        let Some((inode, file)) = identity.procs_of(cgroup).into_iter().find_map(|pid| {
            let f = File::open(format!("/proc/{pid}/ns/net")).ok()?;
            Some((f.metadata().ok()?.ino(), f))
        }) else {
            continue;
        };
        by_inode.entry(inode).or_insert_with(|| (file, HashSet::new())).1.insert(cgroup);
    }
    by_inode.into_values().collect()
}

#[cfg(test)]
mod tests {
    use sidewall_common::{enforce, wire::AF_INET};

    use super::*;

    fn sock(state: u8, cgroup_id: u64, local: &str, remote: &str) -> DiagSocket {
        DiagSocket {
            family: AF_INET as u8,
            state,
            local: local.parse().expect("local"),
            remote: remote.parse().expect("remote"),
            interface: 0,
            cookie: 1,
            cgroup_id,
        }
    }

    #[test]
    fn only_connections_the_rule_denies_are_cut_and_only_at_the_connecting_end() {
        let (proxy, app) = (1, 2);
        let rule = Compiled { flags: enforce::LOOPBACK, connect: vec![8080], ..Default::default() };
        let sockets = [
            sock(TCP_LISTEN, app, "0.0.0.0:9090", "0.0.0.0:0"),
            sock(TCP_LISTEN, app, "127.0.0.1:8080", "0.0.0.0:0"),
            // proxy -> app:9090 (denied) and its accepted end in the app.
            sock(TCP_ESTABLISHED, proxy, "127.0.0.1:40000", "127.0.0.1:9090"),
            sock(TCP_ESTABLISHED, app, "127.0.0.1:9090", "127.0.0.1:40000"),
            // proxy -> app:8080 (allowed).
            sock(TCP_ESTABLISHED, proxy, "127.0.0.1:40001", "127.0.0.1:8080"),
            // The proxy's own accepted connection, on a port its rule does not list.
            sock(TCP_LISTEN, proxy, "127.0.0.1:15000", "0.0.0.0:0"),
            sock(TCP_CLOSE_WAIT, proxy, "127.0.0.1:15000", "127.0.0.1:40002"),
        ];
        // Every cgroup under the proxy's rule, to show that accepted sockets are never cut.
        let cut = forbidden(&sockets, |_| Some(&rule));
        assert_eq!(cut.len(), 1, "{cut:?}");
        assert_eq!((cut[0].cgroup_id, cut[0].remote.port()), (proxy, 9090));
        // A cgroup without a rule in the kernel keeps its connections.
        assert!(forbidden(&sockets, |_| None).is_empty());
    }
}
