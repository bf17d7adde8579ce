//! The enrich stage: a decoded record becomes API events that name their process, its
//! ancestry and its workload. It owns the state that takes (the process cache, workload
//! identity, sockets and flows, namespace baselines), and reports what it learned that the
//! policy engine needs as `Fact`s; it never acts on the kernel itself.

use std::{sync::Arc, time::Instant};

use sidewall_common::{Header, access_op, flags, ns_op, refusal};
use sidewall_proto::v1::{self as pb, get_events_response::Event};

use crate::{
    identity::Identity,
    isolation::{self, IsoEvent, Isolation},
    kernel::alerts::Aggregate,
    kernel::decode::{Record, wait_status},
    net::{Net, NetEvent, UnixConnect, sockdiag::DiagSocket},
    policy::cut::Cut,
    process::{
        ProcEntry, ProcessCache,
        cache::{abi_namespaces, namespaces},
        procfs,
    },
};

/// What a record taught the enrich stage that the policy engine must know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fact {
    /// A cgroup was created: a container's rule goes in before its first instruction.
    CgroupBorn(u64),
    CgroupGone(u64),
    /// A process of a container cgroup acted.
    ContainerSeen(u64),
    /// The container's own mount namespace (its baseline).
    Home {
        cgroup: u64,
        mnt: u32,
    },
    /// A process seen inside its container's own namespaces.
    Arm(u32),
}

/// The enrich stage's output for one record, reused from record to record (no allocation
/// once warm). Events carry the boot-time ns the kernel saw them at.
#[derive(Default)]
pub struct Enriched {
    pub facts: Vec<Fact>,
    pub events: Vec<(Event, u64)>,
}

impl Enriched {
    pub fn clear(&mut self) {
        self.facts.clear();
        self.events.clear();
    }
}

pub struct Enricher {
    pub cache: ProcessCache,
    pub identity: Identity,
    pub net: Net,
    iso: Isolation,
}

impl Enricher {
    pub fn new(cache: ProcessCache, identity: Identity, net: Net) -> Self {
        Self { cache, identity, net, iso: Isolation::default() }
    }

    /// The host's namespaces, for naming transitions into them (pid 1's, or this daemon's when
    /// pid 1's cannot be read), and the namespaces of containers already running.
    pub fn learn_namespaces(&mut self, out: &mut Enriched) {
        let host = [1, std::process::id()].into_iter().find_map(|pid| {
            let e = self.cache.get(pid)?;
            let ns = e.process.namespaces.as_ref().filter(|n| n.mnt != 0)?;
            Some((e.clone(), abi_namespaces(ns)))
        });
        if let Some((entry, ns)) = host {
            self.iso.set_host(entry, ns);
        }
        // Containers older than the daemon: their oldest process sets their baseline.
        for entry in self.cache.by_start() {
            if let Some(ns) = entry.process.namespaces.as_ref().filter(|n| n.mnt != 0) {
                let in_container = self.in_container(&entry);
                let ns = abi_namespaces(ns);
                if self.iso.observe(&entry, &ns, in_container) {
                    out.facts.push(Fact::Home { cgroup: entry.process.cgroup_id, mnt: ns.mnt });
                }
            }
        }
    }

    /// One record: its event (if it makes one) and what it taught.
    pub fn record(&mut self, rec: Record, out: &mut Enriched) {
        let ktime = rec.header().ktime;
        if let Some(ev) = self.event(rec, out) {
            out.events.push((ev, ktime));
        }
    }

    /// Housekeeping: connections whose close never came, and the cache's exited processes.
    pub fn tick(&mut self, now: Instant, ktime: u64, out: &mut Enriched) {
        for ne in self.net.tick(now) {
            let ev = self.net_event(ne);
            out.events.push((ev, ktime));
        }
        self.cache.sweep(now);
    }

    /// The connect that opened a connection found established (and cut, or that would be):
    /// from the process that opened it when this daemon saw that, its container otherwise.
    pub fn established(&mut self, c: &Cut) -> Event {
        let (socket, process, peer) = match self.net.connection(c.socket.cookie) {
            Some(conn) => (conn.socket, self.process(&conn.owner), conn.peer.map(|p| self.process(&p))),
            None => {
                let w = self.identity.resolve(c.cgroup);
                let process = pb::Process {
                    pod: w.pod.clone(),
                    container: w.container.clone(),
                    cgroup_id: c.cgroup,
                    ..Default::default()
                };
                (diag_socket(&c.socket), process, None)
            }
        };
        Event::ProcessConnect(pb::ProcessConnect {
            process: Some(process),
            socket: Some(socket),
            result: "success".into(),
            peer,
            ..Default::default()
        })
    }

    /// A refusal standing for an aggregate the kernel counted over budget: by the container
    /// (no pid: the refusals may come from several of its processes), to the aggregate's
    /// first sample destination, so that the policy engine judges it like the refusals it
    /// stands for.
    pub fn aggregated(&mut self, agg: &Aggregate) -> Event {
        let w = self.identity.resolve(agg.cgroup);
        let process = pb::Process {
            pod: w.pod.clone(),
            container: w.container.clone(),
            cgroup_id: agg.cgroup,
            ..Default::default()
        };
        let (ip, port) = agg.sample.first().copied().unwrap_or((None, 0));
        let address = pb::SocketAddress {
            ip: ip.map(|ip| ip.to_canonical().to_string()).unwrap_or_default(),
            port: port.into(),
            path: String::new(),
        };
        let family = match ip.map(|ip| ip.to_canonical()) {
            Some(std::net::IpAddr::V6(_)) => "ipv6",
            _ => "ipv4",
        };
        let socket = |protocol: &str, local: bool| pb::Socket {
            protocol: protocol.into(),
            family: family.into(),
            loopback: ip.is_some_and(|ip| ip.to_canonical().is_loopback()),
            local: local.then(|| address.clone()),
            remote: (!local).then(|| address.clone()),
            ..Default::default()
        };
        let denied = "denied".to_string();
        match agg.kind {
            refusal::CONNECT => Event::ProcessConnect(pb::ProcessConnect {
                process: Some(process),
                socket: Some(socket("tcp", false)),
                result: denied,
                ..Default::default()
            }),
            refusal::SEND => Event::ProcessDatagram(pb::ProcessDatagram {
                process: Some(process),
                socket: Some(socket("udp", false)),
                count: agg.count.min(u64::from(u32::MAX)) as u32,
                result: denied,
                ..Default::default()
            }),
            refusal::BIND => Event::ProcessBind(pb::ProcessBind {
                process: Some(process),
                socket: Some(socket("tcp", true)),
                result: denied,
                ..Default::default()
            }),
            refusal::KILL_NAMESPACE => {
                Event::ProcessNamespace(pb::ProcessNamespace { process: Some(process), ..Default::default() })
            }
            refusal::KILL_ACCESS => Event::ProcessAccess(pb::ProcessAccess {
                process: Some(process),
                cross_container: true,
                ..Default::default()
            }),
            refusal::KILL_RUNTIME_SOCKET => Event::ProcessConnect(pb::ProcessConnect {
                process: Some(process),
                socket: Some(pb::Socket {
                    protocol: "unix".into(),
                    family: "unix".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            _ => Event::ProcessSysctl(pb::ProcessSysctl {
                process: Some(process),
                name: "a loopback-routing sysctl".into(),
                result: denied,
                ..Default::default()
            }),
        }
    }

    /// The process that `vpid` names in the pid namespace `pidns` (syscall arguments and /proc
    /// paths use the caller's pid namespace; the cache is keyed by host pids).
    fn process_in_pidns(&self, pidns: u32, vpid: u32) -> Option<Arc<ProcEntry>> {
        if pidns == 0 || self.iso.host_pidns() == Some(pidns) {
            return self.cache.get(vpid).cloned();
        }
        self.cache
            .by_start()
            .into_iter()
            .filter(|e| e.process.namespaces.as_ref().is_some_and(|n| n.pid == pidns))
            .find(|e| {
                crate::kernel::tasks::local_pid(e.process.pid).and_then(procfs::innermost_pid) == Some(vpid)
            })
    }

    /// A process of `cgroup` (its oldest one the cache knows).
    fn process_of(&self, cgroup: u64) -> Option<Arc<ProcEntry>> {
        let pids = self.identity.procs_of(cgroup);
        // cgroup.procs numbers them as this daemon's pid namespace does; the cache as the kernel.
        pids.iter()
            .filter_map(|p| crate::kernel::tasks::kernel_pid(*p))
            .filter_map(|p| self.cache.get(p))
            .min_by_key(|e| e.process.pid)
            .cloned()
    }

    /// Host processes, and container processes seen inside their container (or children of
    /// one): not the runtime's setup (runc init), whose setns, unshare and /proc reads while it
    /// builds or enters a container are not the container's doing.
    fn acts_as_container(&mut self, entry: &ProcEntry) -> bool {
        !self.in_container(entry) || self.iso.from_home(entry)
    }

    fn in_container(&mut self, entry: &ProcEntry) -> bool {
        let w = self.identity.resolve(entry.process.cgroup_id);
        w.container.as_ref().is_some_and(|c| !c.id.is_empty())
    }

    fn event(&mut self, rec: Record, out: &mut Enriched) -> Option<Event> {
        let ev = match rec {
            Record::Exec(e) => {
                let entry = self.cache.on_exec(&e);
                self.check_drift(&entry, &e.hdr, true, out);
                Event::ProcessExec(pb::ProcessExec {
                    process: Some(self.process(&entry)),
                    parent: entry.parent.as_ref().map(|p| self.process(p)),
                    ancestors: entry.ancestors().skip(1).map(|a| self.process(a)).collect(),
                })
            }
            Record::Exit(x) => {
                let entry = self.cache.on_exit(&x.hdr, Instant::now());
                self.iso.forget(x.hdr.pid);
                let (status, signal, core_dumped) = wait_status(x.exit_code);
                Event::ProcessExit(pb::ProcessExit {
                    process: Some(self.process(&entry)),
                    parent: entry.parent.as_ref().map(|p| self.process(p)),
                    status,
                    signal: signal.into(),
                    core_dumped,
                })
            }
            Record::Fork { hdr, parent_ns } => {
                // Forks feed the process tree; only a clone into new namespaces is an event.
                let child = self.cache.on_fork(&hdr);
                let ie = self.iso.fork(&child, &parent_ns, &hdr.ns, killed(&hdr))?;
                self.iso_event(ie)
            }
            Record::Namespace(e) => {
                let entry = self.cache.lookup(&e.hdr);
                if !killed(&e.hdr) && !self.acts_as_container(&entry) {
                    return None;
                }
                let op = if e.op == ns_op::SETNS { "setns" } else { "unshare" };
                let ie = self.iso.transition(&entry, op, e.before, e.hdr.ns, e.ret);
                self.iso_event(ie)
            }
            Record::Sysctl { hdr, name, value, denied } => {
                let entry = self.cache.lookup(&hdr);
                Event::ProcessSysctl(pb::ProcessSysctl {
                    process: Some(self.process(&entry)),
                    parent: self.parent(&entry),
                    name,
                    value,
                    result: if denied { "denied" } else { "success" }.into(),
                })
            }
            Record::Access { hdr, op, target_pid, target_cgroup, path } => {
                let owner = self.cache.lookup(&hdr);
                if !killed(&hdr) && !self.acts_as_container(&owner) {
                    return None;
                }
                let target = match op {
                    // A resolved file names the target in the host's pid namespace.
                    access_op::PROC_FILE => self.cache.get(target_pid).cloned(),
                    // A file of another container's mounts: one of that container's processes.
                    access_op::FOREIGN_FILE => self.process_of(target_cgroup),
                    // Paths and syscall arguments name it in the caller's pid namespace.
                    _ => self.process_in_pidns(hdr.ns.pid, target_pid),
                };
                let ie = self.iso.access(owner, op, target, target_cgroup, path);
                self.iso_event(ie)
            }
            Record::CgroupMkdir { id, path, .. } => {
                self.identity.learn(id, &path);
                out.facts.push(Fact::CgroupBorn(id));
                return None;
            }
            Record::CgroupRmdir { id, .. } => {
                self.identity.forget(id);
                self.iso.forget_cgroup(id);
                out.facts.push(Fact::CgroupGone(id));
                return None;
            }
            Record::Sock(e) => {
                if e.hdr.flags & flags::NS_UNKNOWN == 0 {
                    let entry = self.cache.lookup(&e.hdr);
                    self.check_drift(&entry, &e.hdr, false, out);
                }
                let ne = self.net.handle(&e, &mut self.cache, &mut self.identity)?;
                self.net_event(ne)
            }
            Record::UnixConnect { hdr, path, ret, peer, peer_pid, .. } => {
                let c = UnixConnect { hdr: &hdr, typed: &path, ret, reached: &peer, peer_pid };
                let ne = self.net.unix_connect(&c, &mut self.cache, &mut self.identity);
                self.net_event(ne)
            }
        };
        Some(ev)
    }

    /// Learns the container's namespaces from its first process, and reports a process found
    /// in other namespaces (an event ahead of the one that revealed it).
    /// `learn`: the record may set its container's baseline (exec records only: nothing the
    /// runtime does half-way through building a container should define it).
    fn check_drift(&mut self, entry: &Arc<ProcEntry>, hdr: &Header, learn: bool, out: &mut Enriched) {
        if hdr.flags & flags::NS_UNKNOWN != 0 {
            return;
        }
        let in_container = self.in_container(entry);
        let cgroup = entry.process.cgroup_id;
        if in_container {
            out.facts.push(Fact::ContainerSeen(cgroup));
        }
        if learn && self.iso.observe(entry, &hdr.ns, in_container) {
            out.facts.push(Fact::Home { cgroup, mnt: hdr.ns.mnt });
        }
        let drift = self.iso.drift(entry, &hdr.ns, in_container);
        if self.iso.is_home(entry.process.pid) {
            out.facts.push(Fact::Arm(entry.process.pid));
        }
        if let Some(ie) = drift {
            let ev = self.iso_event(ie);
            out.events.push((ev, hdr.ktime));
        }
    }

    fn net_event(&mut self, ne: NetEvent) -> Event {
        match ne {
            NetEvent::Connect { owner, socket, result, peer } => Event::ProcessConnect(pb::ProcessConnect {
                process: Some(self.process(&owner)),
                parent: self.parent(&owner),
                socket: Some(socket),
                result: result.into(),
                peer: peer.map(|p| self.process(&p)),
            }),
            NetEvent::Accept { owner, socket, peer } => Event::ProcessAccept(pb::ProcessAccept {
                process: Some(self.process(&owner)),
                parent: self.parent(&owner),
                socket: Some(socket),
                peer: peer.map(|p| self.process(&p)),
            }),
            NetEvent::Bind { owner, socket, wildcard, denied } => Event::ProcessBind(pb::ProcessBind {
                process: Some(self.process(&owner)),
                parent: self.parent(&owner),
                socket: Some(socket),
                wildcard,
                result: if denied { "denied" } else { "success" }.into(),
            }),
            NetEvent::Close { owner, socket, outbound, sent, received, duration_ns, peer } => {
                Event::ProcessClose(pb::ProcessClose {
                    process: Some(self.process(&owner)),
                    socket: Some(socket),
                    direction: if outbound { "outbound" } else { "inbound" }.into(),
                    bytes_sent: sent,
                    bytes_received: received,
                    duration_ns,
                    peer: peer.map(|p| self.process(&p)),
                })
            }
            NetEvent::Datagram { owner, socket, count, peer, denied } => {
                Event::ProcessDatagram(pb::ProcessDatagram {
                    process: Some(self.process(&owner)),
                    parent: self.parent(&owner),
                    socket: Some(socket),
                    count,
                    peer: peer.map(|p| self.process(&p)),
                    result: if denied { "denied" } else { "success" }.into(),
                })
            }
        }
    }

    fn iso_event(&mut self, ie: IsoEvent) -> Event {
        match ie {
            IsoEvent::Namespace { owner, operation, before, after, result, target, target_host } => {
                Event::ProcessNamespace(pb::ProcessNamespace {
                    process: Some(self.process(&owner)),
                    parent: self.parent(&owner),
                    operation: operation.into(),
                    changed: isolation::changed(&before, &after).into_iter().map(String::from).collect(),
                    before: Some(namespaces(&before)),
                    after: Some(namespaces(&after)),
                    result,
                    target: target.map(|t| self.process(&t)),
                    target_host,
                })
            }
            IsoEvent::Access { owner, access, target, path, cross } => {
                Event::ProcessAccess(pb::ProcessAccess {
                    process: Some(self.process(&owner)),
                    parent: self.parent(&owner),
                    access: access.into(),
                    target: target.map(|t| self.process(&t)),
                    path,
                    cross_container: cross,
                })
            }
        }
    }

    fn parent(&mut self, entry: &Arc<ProcEntry>) -> Option<pb::Process> {
        entry.parent.as_ref().map(|p| self.process(p))
    }

    /// The process as events show it: cached facts plus current workload identity.
    fn process(&mut self, entry: &Arc<ProcEntry>) -> pb::Process {
        let w = self.identity.resolve(entry.process.cgroup_id);
        let mut p = entry.process.clone();
        p.pod = w.pod.clone();
        p.container = w.container.clone();
        p
    }
}

/// The socket of a connection this daemon did not see open, as sock_diag lists it.
fn diag_socket(s: &DiagSocket) -> pb::Socket {
    let address = |a: &std::net::SocketAddr| pb::SocketAddress {
        ip: a.ip().to_canonical().to_string(),
        port: a.port().into(),
        path: String::new(),
    };
    pb::Socket {
        protocol: "tcp".into(),
        family: if s.remote.ip().to_canonical().is_ipv4() { "ipv4" } else { "ipv6" }.into(),
        local: Some(address(&s.local)),
        remote: Some(address(&s.remote)),
        loopback: s.remote.ip().to_canonical().is_loopback(),
        netns: 0,
        cookie: s.cookie,
        ..Default::default()
    }
}

/// Whether the kernel killed the record's process for what it reports: such a record is
/// reported even when the daemon missed the process's earlier history (a flood of telemetry
/// can drop it; the kill's own record travels on the alert lane).
fn killed(hdr: &Header) -> bool {
    hdr.flags & flags::KILLED != 0
}
