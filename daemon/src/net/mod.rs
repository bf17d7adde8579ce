//! Socket events: joins the kernel's socket records (connect and bind in the caller's
//! context; handshakes and closes from sock_ops, often in softirq) by socket cookie, keeps
//! port ownership per network namespace, attributes loopback traffic to the sibling container
//! that owns the port, and maintains the per-pod flow graph.

pub mod addr;
pub mod flows;
pub mod netns;
pub mod ports;
pub mod sockdiag;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sidewall_common::{
    Header, SockEvent, fin, flags, sock_op, verdict,
    wire::{
        IPPROTO_TCP, IPPROTO_UDP, TCP_CLOSE_WAIT, TCP_CLOSING, TCP_FIN_WAIT2, TCP_LAST_ACK, TCP_SYN_SENT,
        TCP_TIME_WAIT,
    },
};
use sidewall_proto::v1 as pb;

use self::{
    addr::{family_name, ip, protocol_name},
    flows::{Endpoint, Flow, FlowGraph},
    netns::NetnsIndex,
    ports::{Binding, PortTable},
};
use crate::{
    clock::Clock,
    identity::Identity,
    process::{ProcEntry, ProcessCache},
};

/// A connect with no answer yet is reported as in progress after this long.
const CONNECT_PENDING: Duration = Duration::from_secs(2);
/// Sockets tracked at most (connections in flight plus established ones).
const MAX_SOCKETS: usize = 262_144;

/// What the socket layer reports; the pipeline turns it into API events.
#[derive(Debug)]
pub enum NetEvent {
    Connect {
        owner: Arc<ProcEntry>,
        socket: pb::Socket,
        result: &'static str,
        peer: Option<Arc<ProcEntry>>,
    },
    Accept {
        owner: Arc<ProcEntry>,
        socket: pb::Socket,
        peer: Option<Arc<ProcEntry>>,
    },
    Bind {
        owner: Arc<ProcEntry>,
        socket: pb::Socket,
        wildcard: bool,
        /// Refused by policy in the kernel.
        denied: bool,
    },
    Close {
        owner: Arc<ProcEntry>,
        socket: pb::Socket,
        outbound: bool,
        sent: u64,
        received: u64,
        duration_ns: u64,
        peer: Option<Arc<ProcEntry>>,
    },
    Datagram {
        owner: Arc<ProcEntry>,
        socket: pb::Socket,
        count: u32,
        peer: Option<Arc<ProcEntry>>,
        denied: bool,
    },
}

/// A connection's socket, the process that opened it, and the peer it reached.
pub struct Connection {
    pub socket: pb::Socket,
    pub owner: Arc<ProcEntry>,
    pub peer: Option<Arc<ProcEntry>>,
}

struct SockState {
    owner: Arc<ProcEntry>,
    socket: pb::Socket,
    local: Option<SocketAddr>,
    remote: SocketAddr,
    peer: Option<Arc<ProcEntry>>,
    outbound: bool,
    since: Instant,
    established_ns: u64,
    /// process_connect was emitted (on success, failure, or as in progress).
    reported: bool,
}

/// A unix connect as the kernel saw it at its exit.
pub struct UnixConnect<'a> {
    pub hdr: &'a Header,
    /// The path the caller passed.
    pub typed: &'a str,
    pub ret: i32,
    /// The address the reached socket was bound to (empty: not resolved).
    pub reached: &'a str,
    /// The listening process (host pid; 0: unknown).
    pub peer_pid: u32,
}

/// A unix connect's outcome from its return value.
fn unix_result(ret: i32) -> &'static str {
    match -ret {
        0 => "success",
        libc::ECONNREFUSED | libc::ENOENT => "refused",
        libc::EINPROGRESS | libc::EAGAIN => "in_progress",
        _ => "failed",
    }
}

/// Payload bytes (sent, received) of a closed connection. The kernel counts sequence space,
/// so the active opener's acked bytes include its SYN, and both counts include a FIN once it
/// was acked or received. The state the socket closed from says whether our FIN was acked;
/// theirs is reported by the kernel, because a socket closed in FIN_WAIT2 (we shut down, read
/// their reply, and closed before their FIN arrived) looks the same either way.
pub fn payload_bytes(e: &SockEvent, outbound: bool) -> (u64, u64) {
    let syn = u64::from(outbound);
    let our_fin_acked = matches!(e.old_state, TCP_FIN_WAIT2 | TCP_TIME_WAIT | TCP_LAST_ACK | TCP_CLOSING);
    let their_fin = match e.fin {
        fin::RECEIVED => true,
        fin::NOT_RECEIVED => false,
        _ => {
            matches!(e.old_state, TCP_FIN_WAIT2 | TCP_TIME_WAIT | TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING)
        }
    };
    (
        e.bytes_acked.saturating_sub(syn + u64::from(our_fin_acked)),
        e.bytes_received.saturating_sub(u64::from(their_fin)),
    )
}

pub struct Net {
    ports: PortTable,
    sockets: HashMap<u64, SockState>,
    /// Established outbound connections by (netns cookie, local, remote): finds the client
    /// of an accepted connection on the same node.
    tuples: HashMap<(u64, SocketAddr, SocketAddr), u64>,
    netns: NetnsIndex,
    pub flows: Arc<Mutex<FlowGraph>>,
    clock: Clock,
}

fn address(a: &SocketAddr) -> pb::SocketAddress {
    pb::SocketAddress { ip: a.ip().to_string(), port: a.port().into(), path: String::new() }
}

impl Net {
    pub fn new(clock: Clock) -> Self {
        Self {
            ports: PortTable::default(),
            sockets: HashMap::new(),
            tuples: HashMap::new(),
            netns: NetnsIndex::default(),
            flows: Arc::new(Mutex::new(FlowGraph::default())),
            clock,
        }
    }

    pub fn handle(
        &mut self,
        e: &SockEvent,
        cache: &mut ProcessCache,
        identity: &mut Identity,
    ) -> Option<NetEvent> {
        match e.op {
            sock_op::CONNECT => self.connect(e, cache, identity),
            sock_op::ESTABLISHED_ACTIVE => self.established(e, identity),
            sock_op::ESTABLISHED_PASSIVE => self.accepted(e),
            sock_op::CLOSE => self.closed(e, identity),
            sock_op::BIND => Some(self.bind(e, cache)),
            sock_op::RELEASE => {
                self.ports.release(e.cookie);
                None
            }
            sock_op::SENDMSG => Some(self.datagram(e, cache, identity)),
            _ => None,
        }
    }

    /// A unix-socket connect (strict sensor set), at its exit: `typed` is the path the caller
    /// passed, `reached` the address the socket it reached was bound to (empty if unresolved),
    /// `peer_pid` the process listening there. A connection between two processes is an edge
    /// of the pod's flow graph.
    pub fn unix_connect(
        &mut self,
        c: &UnixConnect<'_>,
        cache: &mut ProcessCache,
        identity: &mut Identity,
    ) -> NetEvent {
        let owner = cache.lookup(c.hdr);
        let remote = if c.reached.is_empty() { c.typed } else { c.reached };
        let netns = owner.process.namespaces.as_ref().map_or(0, |n| n.net);
        let socket = pb::Socket {
            protocol: "unix".into(),
            family: "unix".into(),
            remote: Some(pb::SocketAddress { path: remote.into(), ..Default::default() }),
            requested_path: if remote == c.typed { String::new() } else { c.typed.into() },
            netns,
            ..Default::default()
        };
        let peer = (c.peer_pid != 0).then(|| cache.get(c.peer_pid).cloned()).flatten();
        if c.ret == 0
            && let Some(peer) = peer.as_ref()
        {
            // The pod's graph is keyed by its namespace cookie, known once one of its inet
            // sockets was seen; until then by its inode, marked apart from any cookie.
            let key = self.netns.cookie(netns).unwrap_or(1 << 63 | u64::from(netns));
            self.record_unix_flow(key, netns, &owner, peer, remote, identity);
        }
        NetEvent::Connect { owner, socket, result: unix_result(c.ret), peer }
    }

    /// Connects still unanswered after a while are reported as in progress.
    pub fn tick(&mut self, now: Instant) -> Vec<NetEvent> {
        let mut out = Vec::new();
        for st in self.sockets.values_mut() {
            if !st.reported && now.duration_since(st.since) >= CONNECT_PENDING {
                st.reported = true;
                out.push(NetEvent::Connect {
                    owner: st.owner.clone(),
                    socket: st.socket.clone(),
                    result: "in_progress",
                    peer: st.peer.clone(),
                });
            }
        }
        out
    }

    /// A connection this daemon saw open.
    pub fn connection(&self, cookie: u64) -> Option<Connection> {
        self.sockets.get(&cookie).map(|s| Connection {
            socket: s.socket.clone(),
            owner: s.owner.clone(),
            peer: s.peer.clone(),
        })
    }

    pub fn port_bindings(&self) -> usize {
        self.ports.len()
    }

    /// The socket as events show it, for an owner in the caller's context.
    fn socket(&mut self, e: &SockEvent, owner: &ProcEntry, remote: Option<SocketAddr>) -> pb::Socket {
        // The namespace the kernel saw the call in; the cache holds the one at exec, which a
        // process that unshared its network namespace since has left.
        let inode = if e.hdr.flags & flags::NS_UNKNOWN == 0 && e.hdr.ns.net != 0 {
            e.hdr.ns.net
        } else {
            owner.process.namespaces.as_ref().map_or(0, |n| n.net)
        };
        self.netns.learn(e.netns_cookie, inode);
        self.netns.seen(inode, owner.process.pid);
        let loopback = remote.is_some_and(|r| self.netns.is_local(inode, owner.process.pid, &r.ip()));
        let family_ip = remote.map_or_else(|| ip(e.family, &e.local_addr), |r| r.ip());
        pb::Socket {
            protocol: protocol_name(e.protocol).into(),
            family: family_name(e.family, &family_ip).into(),
            local: None,
            remote: remote.as_ref().map(address),
            loopback,
            netns: inode,
            cookie: e.cookie,
            ..Default::default()
        }
    }

    fn peer_of(&self, e: &SockEvent, remote: &SocketAddr, loopback: bool) -> Option<Arc<ProcEntry>> {
        if !loopback {
            return None;
        }
        self.ports.owner(e.netns_cookie, e.protocol, &remote.ip(), remote.port()).map(|b| b.owner.clone())
    }

    fn connect(
        &mut self,
        e: &SockEvent,
        cache: &mut ProcessCache,
        identity: &mut Identity,
    ) -> Option<NetEvent> {
        let owner = cache.lookup(&e.hdr);
        let remote = SocketAddr::new(ip(e.family, &e.remote_addr), e.remote_port);
        let socket = self.socket(e, &owner, Some(remote));
        let peer = self.peer_of(e, &remote, socket.loopback);
        if e.verdict == verdict::DENIED {
            // Refused by policy in the kernel: there is no connection to follow.
            return Some(NetEvent::Connect { owner, socket, result: "denied", peer });
        }
        if e.protocol == IPPROTO_UDP {
            // A UDP connect only sets the default destination: it cannot be refused here.
            self.record_flow(
                e.netns_cookie,
                &socket,
                &owner,
                peer.as_ref(),
                remote.port(),
                1,
                (0, 0),
                identity,
            );
            return Some(NetEvent::Connect { owner, socket, result: "success", peer });
        }
        if self.sockets.len() >= MAX_SOCKETS {
            return Some(NetEvent::Connect { owner, socket, result: "in_progress", peer });
        }
        let st = SockState {
            owner,
            socket,
            local: None,
            remote,
            peer,
            outbound: true,
            since: Instant::now(),
            established_ns: 0,
            reported: false,
        };
        self.sockets.insert(e.cookie, st);
        None
    }

    fn established(&mut self, e: &SockEvent, identity: &mut Identity) -> Option<NetEvent> {
        let local = SocketAddr::new(ip(e.family, &e.local_addr), e.local_port);
        let st = self.sockets.get_mut(&e.cookie)?;
        st.local = Some(local);
        st.socket.local = Some(address(&local));
        st.established_ns = e.hdr.ktime;
        let first_report = !st.reported;
        st.reported = true;
        let (socket, owner, peer, remote) = (st.socket.clone(), st.owner.clone(), st.peer.clone(), st.remote);
        self.tuples.insert((e.netns_cookie, local, remote), e.cookie);
        self.record_flow(e.netns_cookie, &socket, &owner, peer.as_ref(), remote.port(), 1, (0, 0), identity);
        first_report.then_some(NetEvent::Connect { owner, socket, result: "success", peer })
    }

    fn accepted(&mut self, e: &SockEvent) -> Option<NetEvent> {
        let local = SocketAddr::new(ip(e.family, &e.local_addr), e.local_port);
        let remote = SocketAddr::new(ip(e.family, &e.remote_addr), e.remote_port);
        let listener = self.ports.owner(e.netns_cookie, IPPROTO_TCP, &local.ip(), local.port())?;
        let owner = listener.owner.clone();
        let peer = self
            .tuples
            .get(&(e.netns_cookie, remote, local))
            .and_then(|c| self.sockets.get(c))
            .map(|s| s.owner.clone());
        let inode = self.netns.inode(e.netns_cookie).unwrap_or(0);
        let socket = pb::Socket {
            protocol: "tcp".into(),
            family: family_name(e.family, &local.ip()).into(),
            local: Some(address(&local)),
            remote: Some(address(&remote)),
            loopback: peer.is_some() || addr::is_loopback(&remote.ip()),
            netns: inode,
            cookie: e.cookie,
            ..Default::default()
        };
        if self.sockets.len() < MAX_SOCKETS {
            let st = SockState {
                owner: owner.clone(),
                socket: socket.clone(),
                local: Some(local),
                remote,
                peer: peer.clone(),
                outbound: false,
                since: Instant::now(),
                established_ns: e.hdr.ktime,
                reported: true,
            };
            self.sockets.insert(e.cookie, st);
        }
        Some(NetEvent::Accept { owner, socket, peer })
    }

    fn closed(&mut self, e: &SockEvent, identity: &mut Identity) -> Option<NetEvent> {
        let st = self.sockets.remove(&e.cookie)?;
        if let Some(local) = st.local {
            self.tuples.remove(&(e.netns_cookie, local, st.remote));
        }
        if !st.reported {
            let result = if e.old_state == TCP_SYN_SENT { "refused" } else { "failed" };
            return Some(NetEvent::Connect { owner: st.owner, socket: st.socket, result, peer: st.peer });
        }
        if st.established_ns == 0 {
            // Reported as in progress, never established: say how it ended.
            let result = if e.old_state == TCP_SYN_SENT { "refused" } else { "failed" };
            return Some(NetEvent::Connect { owner: st.owner, socket: st.socket, result, peer: st.peer });
        }
        let (sent, received) = payload_bytes(e, st.outbound);
        if st.outbound {
            // The client's totals count the connection once.
            self.record_flow(
                e.netns_cookie,
                &st.socket,
                &st.owner,
                st.peer.as_ref(),
                st.remote.port(),
                0,
                (sent, received),
                identity,
            );
        }
        Some(NetEvent::Close {
            owner: st.owner,
            socket: st.socket,
            outbound: st.outbound,
            sent,
            received,
            duration_ns: e.hdr.ktime.saturating_sub(st.established_ns),
            peer: st.peer,
        })
    }

    fn bind(&mut self, e: &SockEvent, cache: &mut ProcessCache) -> NetEvent {
        let owner = cache.lookup(&e.hdr);
        let local = SocketAddr::new(ip(e.family, &e.local_addr), e.local_port);
        let mut socket = self.socket(e, &owner, None);
        socket.local = Some(address(&local));
        let wildcard = local.ip().is_unspecified();
        if e.verdict == verdict::DENIED {
            return NetEvent::Bind { owner, socket, wildcard, denied: true };
        }
        self.ports.bind(
            e.netns_cookie,
            e.protocol,
            e.local_port,
            Binding { ip: local.ip(), cookie: e.cookie, owner: owner.clone() },
        );
        NetEvent::Bind { owner, socket, wildcard, denied: false }
    }

    fn datagram(&mut self, e: &SockEvent, cache: &mut ProcessCache, identity: &mut Identity) -> NetEvent {
        let owner = cache.lookup(&e.hdr);
        let remote = SocketAddr::new(ip(e.family, &e.remote_addr), e.remote_port);
        let socket = self.socket(e, &owner, Some(remote));
        let peer = self.peer_of(e, &remote, socket.loopback);
        let denied = e.verdict == verdict::DENIED;
        if !denied {
            self.record_flow(
                e.netns_cookie,
                &socket,
                &owner,
                peer.as_ref(),
                remote.port(),
                e.count.into(),
                (0, 0),
                identity,
            );
        }
        NetEvent::Datagram { owner, socket, count: e.count, peer, denied }
    }

    /// Adds to the flow graph when both ends are known and the traffic stays on loopback.
    #[allow(clippy::too_many_arguments)]
    fn record_flow(
        &self,
        netns_cookie: u64,
        socket: &pb::Socket,
        owner: &ProcEntry,
        peer: Option<&Arc<ProcEntry>>,
        port: u16,
        connections: u64,
        bytes: (u64, u64),
        identity: &mut Identity,
    ) {
        let Some(peer) = peer.filter(|_| socket.loopback) else {
            return;
        };
        let src = identity.resolve(owner.process.cgroup_id);
        let dst = identity.resolve(peer.process.cgroup_id);
        let protocol = if socket.protocol == "udp" { "udp" } else { "tcp" };
        let flow = Flow {
            netns_cookie,
            netns: socket.netns,
            protocol,
            source: Endpoint { pod: src.pod.as_ref(), container: src.container.as_ref() },
            destination: Endpoint { pod: dst.pod.as_ref(), container: dst.container.as_ref() },
            port,
            name: "",
        };
        let now = self.clock.timestamp(Clock::boot_ns());
        self.flows.lock().unwrap_or_else(|e| e.into_inner()).record(&flow, connections, bytes, now);
    }

    fn record_unix_flow(
        &self,
        netns_cookie: u64,
        netns: u32,
        owner: &ProcEntry,
        peer: &ProcEntry,
        name: &str,
        identity: &mut Identity,
    ) {
        let src = identity.resolve(owner.process.cgroup_id);
        let dst = identity.resolve(peer.process.cgroup_id);
        let flow = Flow {
            netns_cookie,
            netns,
            protocol: "unix",
            source: Endpoint { pod: src.pod.as_ref(), container: src.container.as_ref() },
            destination: Endpoint { pod: dst.pod.as_ref(), container: dst.container.as_ref() },
            port: 0,
            name,
        };
        let now = self.clock.timestamp(Clock::boot_ns());
        self.flows.lock().unwrap_or_else(|e| e.into_inner()).record(&flow, 1, (0, 0), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_bytes_remove_syn_and_fins() {
        // Client closed last (LAST_ACK): sent 20 + SYN + FIN, received 40 + FIN.
        let client =
            SockEvent { old_state: TCP_LAST_ACK, bytes_acked: 22, bytes_received: 41, ..Default::default() };
        assert_eq!(payload_bytes(&client, true), (20, 40));
        // Server closed first and went to TIME_WAIT from FIN_WAIT2: sent 40 + FIN, received 20 + FIN.
        let server =
            SockEvent { old_state: TCP_FIN_WAIT2, bytes_acked: 41, bytes_received: 21, ..Default::default() };
        assert_eq!(payload_bytes(&server, false), (40, 20));
        // Reset while established: no FINs.
        let reset = SockEvent { old_state: 1, bytes_acked: 11, bytes_received: 7, ..Default::default() };
        assert_eq!(payload_bytes(&reset, true), (10, 7));
        // Client shut down, read the reply and closed before the server's FIN arrived.
        let early = SockEvent {
            old_state: TCP_FIN_WAIT2,
            fin: fin::NOT_RECEIVED,
            bytes_acked: 7,
            bytes_received: 10,
            ..Default::default()
        };
        assert_eq!(payload_bytes(&early, true), (5, 10));
        let late = SockEvent { fin: fin::RECEIVED, bytes_received: 11, ..early };
        assert_eq!(payload_bytes(&late, true), (5, 10));
    }
}
