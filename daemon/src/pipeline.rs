//! The one-way pipeline: ring-buffer record -> decode -> process cache -> workload identity
//! -> event -> hub. One task owns every stage's state, so no stage needs a lock.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use sidewall_common::{Header, access_op, enforce as enforce_bits, flags, kind, ns_op};
use sidewall_proto::v1::{self as pb, get_events_response::Event};
use tokio::sync::watch;

use crate::{
    event::{self, Shared},
    export::hub::Hub,
    identity::Identity,
    isolation::{self, IsoEvent, Isolation},
    kernel::{
        decode::{self, Record},
        ringbuf::{KernelDrops, RingReader},
    },
    metrics::Metrics,
    net::{Net, NetEvent, netns},
    policy::{
        cut::{self, Cut},
        detect,
        enforce::{self, Enforcer},
        model::Mode,
        parse::Policy,
        store::{self, PolicyStore},
    },
    process::{Clock, ProcEntry, ProcessCache, cache::namespaces, procfs},
    stats::{Stage, Stats},
};

/// Bound on the cgroups whose pod addresses are remembered.
const MAX_POD_ADDRS: usize = 65_536;

pub struct Pipeline {
    pub cache: ProcessCache,
    pub identity: Identity,
    pub net: Net,
    pub iso: Isolation,
    pub policies: Arc<PolicyStore>,
    /// The policies as of `policy_generation`; refreshed when the store moves on.
    snapshot: Vec<Policy>,
    policy_generation: u64,
    pub enforcer: Option<Enforcer>,
    /// The rule (policy and container rule indices in `snapshot`) that governs each cgroup's
    /// processes; cleared with every new snapshot and every tick (names can arrive later).
    rule_cache: HashMap<u64, Option<(usize, usize)>>,
    /// Cgroups whose connect rules tightened: their established connections are checked.
    tightened: HashSet<u64>,
    /// What monitor-mode rules would put in the kernel, per cgroup, and the cgroups where that
    /// tightened: their established connections are reported as `would_cut`.
    would: HashMap<u64, enforce::Compiled>,
    would_tighten: HashSet<u64>,
    /// The pod's own addresses per enforced cgroup, and when they were read.
    pod_addrs: HashMap<u64, (Instant, Vec<[u8; 16]>)>,
    pub metrics: Option<Arc<Metrics>>,
    pub hub: Arc<Hub>,
    pub stats: Arc<Stats>,
    pub clock: Clock,
    pub node_name: String,
    kernel_drops_reported: [u64; kind::MAX as usize],
}

impl Pipeline {
    pub fn new(
        cache: ProcessCache,
        identity: Identity,
        hub: Arc<Hub>,
        stats: Arc<Stats>,
        clock: Clock,
        node_name: String,
    ) -> Self {
        Self {
            cache,
            identity,
            net: Net::new(clock),
            iso: Isolation::default(),
            policies: PolicyStore::with_builtin(),
            snapshot: Vec::new(),
            policy_generation: u64::MAX,
            enforcer: None,
            rule_cache: HashMap::new(),
            tightened: HashSet::new(),
            would: HashMap::new(),
            would_tighten: HashSet::new(),
            pod_addrs: HashMap::new(),
            metrics: None,
            hub,
            stats,
            clock,
            node_name,
            kernel_drops_reported: [0; kind::MAX as usize],
        }
    }

    /// The host's namespaces, for naming transitions into them (pid 1's, or this daemon's when
    /// pid 1's cannot be read), and the namespaces of containers already running.
    pub fn learn_namespaces(&mut self) {
        let host = [1, std::process::id()].into_iter().find_map(|pid| {
            let e = self.cache.get(pid)?;
            let ns = e.process.namespaces.as_ref().filter(|n| n.mnt != 0)?;
            Some((e.clone(), to_abi(ns)))
        });
        if let Some((entry, ns)) = host {
            self.iso.set_host(entry, ns);
        }
        // Containers older than the daemon: their oldest process sets their baseline.
        for entry in self.cache.by_start() {
            if let Some(ns) = entry.process.namespaces.as_ref().filter(|n| n.mnt != 0) {
                let in_container = self.in_container(&entry);
                let ns = to_abi(ns);
                if self.iso.observe(&entry, &ns, in_container) {
                    self.set_home(entry.process.cgroup_id, ns.mnt);
                }
            }
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
            .find(|e| procfs::innermost_pid(e.process.pid) == Some(vpid))
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

    /// Handles one raw record from the ring buffer.
    pub fn handle(&mut self, bytes: &[u8]) {
        match decode::decode(bytes) {
            Ok(rec) => {
                let ktime = rec.header().ktime;
                if let Some(ev) = self.enrich(rec) {
                    self.publish(ev, ktime);
                }
            }
            Err(e) => {
                self.stats.count_lost(Stage::Decode, 1);
                tracing::debug!(error = %e, "malformed ring buffer record");
            }
        }
    }

    /// `ktime`: boot-time ns when the kernel saw it, which becomes the event's `time`.
    fn publish(&mut self, event: Event, ktime: u64) {
        let ev: Shared = Arc::new(pb::GetEventsResponse {
            event: Some(event),
            node_name: self.node_name.clone(),
            time: Some(self.clock.timestamp(ktime)),
        });
        self.stats.count_event(event::kind(&ev));
        if let Some(m) = &self.metrics {
            m.observe(&ev);
        }
        self.hub.publish(&ev);
        self.detect(&ev, ktime);
    }

    /// Checks an event against the policies; each violation is published as a policy_alert,
    /// and a process that a policy kills (and the kernel did not) is killed here.
    fn detect(&mut self, ev: &pb::GetEventsResponse, ktime: u64) {
        if matches!(ev.event, Some(Event::PolicyAlert(_)) | Some(Event::LostEvents(_)) | None) {
            return;
        }
        self.refresh_policies();
        let Some(p) = event::subject(ev) else { return };
        let found = match self.rule_cache.get(&p.cgroup_id) {
            Some(found) => *found,
            None => {
                let found = detect::rule_index(&self.snapshot, p);
                // A container whose names are not known yet is asked again next time.
                let named = p.container.as_ref().is_none_or(|c| {
                    !c.name.is_empty() && p.pod.as_ref().is_some_and(|pod| !pod.name.is_empty())
                });
                if named {
                    self.rule_cache.insert(p.cgroup_id, found);
                }
                found
            }
        };
        let Some((pi, ri)) = found else { return };
        let pol = &self.snapshot[pi];
        let violations = detect::check_rule(pol, &pol.spec.containers[ri], ev);
        for v in violations {
            let alert = self.alert(ev, &v);
            if alert.action == "killed"
                && let Some(p) = alert.process.as_ref()
            {
                // SAFETY: kill(2) of the offending process, by the pid the kernel reported.
                unsafe { libc::kill(p.pid as i32, libc::SIGKILL) };
            }
            tracing::info!(rule = v.rule_id, action = %alert.action, policy = %v.policy, "{}", v.message);
            self.publish(Event::PolicyAlert(alert), ktime);
        }
    }

    fn alert(&self, ev: &pb::GetEventsResponse, v: &detect::Violation) -> pb::PolicyAlert {
        let (denied, killable, peer, socket) = match &ev.event {
            // A unix connect cannot be refused, but its caller can be killed (runtime sockets).
            Some(Event::ProcessConnect(c)) => {
                let unix = c.socket.as_ref().is_some_and(|s| s.protocol == "unix");
                (c.result == "denied", unix, c.peer.clone(), c.socket.clone())
            }
            Some(Event::ProcessDatagram(d)) => {
                (d.result == "denied", false, d.peer.clone(), d.socket.clone())
            }
            Some(Event::ProcessBind(b)) => (b.result == "denied", false, None, b.socket.clone()),
            Some(Event::ProcessSysctl(s)) => (s.result == "denied", false, None, None),
            Some(Event::ProcessNamespace(n)) => (false, true, n.target.clone(), None),
            Some(Event::ProcessAccess(a)) => (false, true, a.target.clone(), None),
            _ => (false, false, None, None),
        };
        pb::PolicyAlert {
            rule_id: v.rule_id.into(),
            severity: v.severity.into(),
            mitre_technique: v.mitre.into(),
            policy: v.policy.clone(),
            action: v.action_taken(denied, killable).into(),
            message: v.message.clone(),
            process: event::subject(ev).cloned(),
            peer,
            socket,
            mode: store::mode_name(v.mode).into(),
            trigger: event::kind(ev) as i32,
        }
    }

    /// Picks up policy changes, and recompiles the kernel's maps for every known container.
    fn refresh_policies(&mut self) {
        let generation = self.policies.generation();
        if generation == self.policy_generation {
            return;
        }
        self.policy_generation = generation;
        self.snapshot = self.policies.snapshot();
        self.rule_cache.clear();
        let known: Vec<u64> =
            self.enforcer.as_ref().map(|e| e.known.iter().copied().collect()).unwrap_or_default();
        for cgroup in known {
            self.enforce_cgroup(cgroup);
        }
        self.cut_forbidden();
    }

    /// Compiles the rule governing `cgroup`'s container into the kernel's maps (and, for a
    /// monitor-mode rule, what enforce mode would put there).
    pub fn enforce_cgroup(&mut self, cgroup: u64) {
        if self.enforcer.is_none() {
            return;
        }
        let w = self.identity.resolve(cgroup);
        let probe = pb::Process { pod: w.pod.clone(), container: w.container.clone(), ..Default::default() };
        let (mut compiled, mut shadow) = match detect::rule_for(&self.snapshot, &probe) {
            Some((pol, rule)) => (
                enforce::compile(pol.spec.mode, rule),
                (pol.spec.mode == Mode::Monitor).then(|| enforce::compile(Mode::Enforce, rule)),
            ),
            None => Default::default(),
        };
        // Loopback rules cover the pod's own addresses too (one read serves both).
        let loopback = |c: &enforce::Compiled| c.flags & enforce_bits::LOOPBACK != 0;
        if loopback(&compiled) || shadow.as_ref().is_some_and(loopback) {
            let local = self.pod_addresses(cgroup);
            for c in std::iter::once(&mut compiled).chain(shadow.as_mut()).filter(|c| loopback(c)) {
                c.local = local.clone();
            }
        }
        if let Some(e) = self.enforcer.as_mut()
            && e.apply(cgroup, compiled.clone())
            && limits_destinations(&compiled)
        {
            self.tightened.insert(cgroup);
        }
        match shadow {
            Some(c) if self.would.get(&cgroup) != Some(&c) => {
                if limits_destinations(&c) {
                    self.would_tighten.insert(cgroup);
                }
                self.would.insert(cgroup, c);
            }
            Some(_) => {}
            None => {
                self.would.remove(&cgroup);
            }
        }
    }

    /// The pod's own addresses (loopback and unspecified left out: the kernel knows those), read
    /// from a process of `cgroup` and kept a few seconds. Empty until the cgroup has a process;
    /// the rules are compiled again each second, and pick them up then.
    fn pod_addresses(&mut self, cgroup: u64) -> Vec<[u8; 16]> {
        let now = Instant::now();
        if let Some((at, addrs)) = self.pod_addrs.get(&cgroup)
            && now.duration_since(*at) < netns::ADDRS_TTL
        {
            return addrs.clone();
        }
        let Some(pid) = self.identity.procs_of(cgroup).first().copied() else { return Vec::new() };
        let addrs: Vec<[u8; 16]> = netns::local_addrs(pid)
            .into_iter()
            .map(|ip| ip.to_canonical())
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
            .map(enforce::v6_bytes)
            .collect();
        if self.pod_addrs.len() >= MAX_POD_ADDRS {
            self.pod_addrs.clear();
        }
        self.pod_addrs.insert(cgroup, (now, addrs.clone()));
        addrs
    }

    /// Cuts the established connections that the rules just compiled forbid, and reports each
    /// as a policy_alert with the action `cut`; reports those monitor-mode rules would cut as
    /// `would_cut`, and leaves them be.
    fn cut_forbidden(&mut self) {
        let (cgroups, would) = (std::mem::take(&mut self.tightened), std::mem::take(&mut self.would_tighten));
        let mut found = Vec::new();
        if let Some(e) = self.enforcer.as_ref()
            && !cgroups.is_empty()
        {
            found.extend(
                cut::sweep(&self.identity, &cgroups, |c| e.applied(c), true).into_iter().map(|c| (c, "cut")),
            );
        }
        if !would.is_empty() {
            let rules = &self.would;
            found.extend(
                cut::sweep(&self.identity, &would, |c| rules.get(&c), false)
                    .into_iter()
                    .map(|c| (c, "would_cut")),
            );
        }
        for (c, action) in found {
            if let Some(alert) = self.cut_alert(&c, action) {
                self.publish(Event::PolicyAlert(alert), Clock::boot_ns());
            }
        }
    }

    /// The alert for a cut connection: the violation its connect would be now, from the
    /// process that opened it when this daemon saw that (its container otherwise).
    fn cut_alert(&mut self, c: &Cut, action: &str) -> Option<pb::PolicyAlert> {
        let s = &c.socket;
        let (socket, process, peer) = match self.net.connection(s.cookie) {
            Some(c) => (c.socket, self.process(&c.owner), c.peer.map(|p| self.process(&p))),
            None => {
                let w = self.identity.resolve(c.cgroup);
                let process = pb::Process {
                    pod: w.pod.clone(),
                    container: w.container.clone(),
                    cgroup_id: c.cgroup,
                    ..Default::default()
                };
                (cut_socket(s), process, None)
            }
        };
        let ev = pb::GetEventsResponse {
            event: Some(Event::ProcessConnect(pb::ProcessConnect {
                process: Some(process),
                socket: Some(socket),
                result: "success".into(),
                peer,
                ..Default::default()
            })),
            node_name: self.node_name.clone(),
            time: None,
        };
        let v = detect::check(&self.snapshot, &ev).into_iter().next()?;
        let mut alert = self.alert(&ev, &v);
        alert.message = match action {
            "cut" => format!("{} (established connection cut)", v.message),
            _ => format!("{} (established connection; enforce mode would cut it)", v.message),
        };
        alert.action = action.into();
        tracing::info!(rule = v.rule_id, policy = %v.policy, remote = %s.remote, action, "established connection");
        Some(alert)
    }

    fn enrich(&mut self, rec: Record) -> Option<Event> {
        let ev = match rec {
            Record::Exec(e) => {
                let entry = self.cache.on_exec(&e);
                self.check_drift(&entry, &e.hdr, true);
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
                let ie = self.iso.fork(&child, &parent_ns, &hdr.ns)?;
                self.iso_event(ie)
            }
            Record::Namespace(e) => {
                let entry = self.cache.lookup(&e.hdr);
                if !self.acts_as_container(&entry) {
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
            Record::Access { hdr, op, target_pid, path } => {
                let owner = self.cache.lookup(&hdr);
                if !self.acts_as_container(&owner) {
                    return None;
                }
                // Paths name the target in the caller's pid namespace; a resolved file, in the host's.
                let target = if op == access_op::PROC_FILE {
                    self.cache.get(target_pid).cloned()
                } else {
                    self.process_in_pidns(hdr.ns.pid, target_pid)
                };
                let ie = self.iso.access(owner, op, target, path);
                self.iso_event(ie)
            }
            Record::CgroupMkdir { id, path, .. } => {
                self.identity.learn(id, &path);
                // A new container is under its policy as soon as its cgroup exists.
                self.refresh_policies();
                self.enforce_cgroup(id);
                return None;
            }
            Record::CgroupRmdir { id, .. } => {
                self.identity.forget(id);
                self.pod_addrs.remove(&id);
                self.would.remove(&id);
                self.iso.forget_cgroup(id);
                if let Some(e) = self.enforcer.as_mut() {
                    e.forget(id);
                }
                return None;
            }
            Record::Sock(e) => {
                if e.hdr.flags & flags::NS_UNKNOWN == 0 {
                    let entry = self.cache.lookup(&e.hdr);
                    self.check_drift(&entry, &e.hdr, false);
                }
                let ne = self.net.handle(&e, &mut self.cache, &mut self.identity)?;
                self.net_event(ne)
            }
            Record::UnixConnect { hdr, path } => {
                let ne = self.net.unix_connect(&hdr, &path, &mut self.cache);
                self.net_event(ne)
            }
        };
        Some(ev)
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

    /// Learns the container's namespaces from its first process, and reports a process found
    /// in other namespaces (published at once, beside the event that revealed it).
    /// `learn`: the record may set its container's baseline (exec records only: nothing the
    /// runtime does half-way through building a container should define it).
    fn check_drift(&mut self, entry: &Arc<ProcEntry>, hdr: &Header, learn: bool) {
        if hdr.flags & flags::NS_UNKNOWN != 0 {
            return;
        }
        let in_container = self.in_container(entry);
        if in_container && self.enforcer.as_ref().is_some_and(|e| !e.known.contains(&entry.process.cgroup_id))
        {
            self.refresh_policies();
            self.enforce_cgroup(entry.process.cgroup_id);
            self.cut_forbidden();
        }
        if learn && self.iso.observe(entry, &hdr.ns, in_container) {
            self.set_home(entry.process.cgroup_id, hdr.ns.mnt);
        }
        let drift = self.iso.drift(entry, &hdr.ns, in_container);
        if self.iso.is_home(entry.process.pid)
            && let Some(e) = self.enforcer.as_mut()
        {
            e.arm(entry.process.pid);
        }
        if let Some(ie) = drift {
            let ev = self.iso_event(ie);
            self.publish(ev, hdr.ktime);
        }
    }

    fn set_home(&mut self, cgroup: u64, mnt: u32) {
        if let Some(e) = self.enforcer.as_mut() {
            e.set_home(cgroup, mnt);
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

    /// Emits a lost_events record when the kernel counted new ring-buffer drops.
    pub fn report_kernel_drops(&mut self, totals: [u64; kind::MAX as usize]) {
        let mut by_kind = std::collections::HashMap::new();
        let mut count = 0;
        for (k, (&now, seen)) in totals.iter().zip(self.kernel_drops_reported.iter_mut()).enumerate() {
            let delta = now.saturating_sub(*seen);
            *seen = now;
            if delta > 0 {
                count += delta;
                by_kind.insert(record_kind_name(k as u32).to_string(), delta);
            }
        }
        if count == 0 {
            return;
        }
        self.stats.count_lost(Stage::KernelRingbuf, count);
        tracing::warn!(count, "kernel ring buffer full: events lost");
        let lost = pb::LostEvents { stage: Stage::KernelRingbuf.name().into(), count, by_kind };
        self.publish(Event::LostEvents(lost), Clock::boot_ns());
    }

    /// Periodic housekeeping.
    pub fn tick(&mut self, now: Instant) {
        for ne in self.net.tick(now) {
            let ev = self.net_event(ne);
            self.publish(ev, Clock::boot_ns());
        }
        self.cache.sweep(now);
        self.rule_cache.clear();
        self.hub.report_losses();
        self.refresh_policies();
        // Names from the Kubernetes API can come after a container starts: recompile.
        let known: Vec<u64> =
            self.enforcer.as_ref().map(|e| e.known.iter().copied().collect()).unwrap_or_default();
        for cgroup in known {
            self.enforce_cgroup(cgroup);
        }
        self.cut_forbidden();
        self.stats.process_cache_size.store(self.cache.len() as u64, Relaxed);
    }
}

/// The socket of a connection this daemon did not see open, as sock_diag lists it.
fn cut_socket(s: &crate::net::sockdiag::DiagSocket) -> pb::Socket {
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
    }
}

/// Whether compiled rules limit where a container may connect (what a sweep checks).
fn limits_destinations(c: &enforce::Compiled) -> bool {
    c.flags & (enforce_bits::LOOPBACK | enforce_bits::EGRESS) != 0
}

fn record_kind_name(k: u32) -> &'static str {
    match k {
        kind::EXEC => "process_exec",
        kind::EXIT => "process_exit",
        kind::FORK => "process_fork",
        kind::NAMESPACE => "process_namespace",
        kind::ACCESS => "process_access",
        kind::SYSCTL => "process_sysctl",
        kind::CGROUP_MKDIR => "cgroup_mkdir",
        kind::CGROUP_RMDIR => "cgroup_rmdir",
        kind::SOCK => "socket",
        kind::UNIX_CONNECT => "unix_connect",
        _ => "other",
    }
}

fn to_abi(n: &pb::Namespaces) -> sidewall_common::Namespaces {
    sidewall_common::Namespaces {
        uts: n.uts,
        ipc: n.ipc,
        mnt: n.mnt,
        pid: n.pid,
        pid_for_children: n.pid_for_children,
        net: n.net,
        time: n.time,
        time_for_children: n.time_for_children,
        cgroup: n.cgroup,
        user: n.user,
    }
}

/// (exit status, signal name, core dumped) from a wait(2)-style status word.
pub fn wait_status(code: u32) -> (u32, &'static str, bool) {
    let sig = code & 0x7f;
    if sig == 0 { ((code >> 8) & 0xff, "", false) } else { (0, signal_name(sig), code & 0x80 != 0) }
}

pub fn signal_name(sig: u32) -> &'static str {
    const NAMES: [&str; 32] = [
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    NAMES.get(sig as usize).copied().filter(|n| !n.is_empty()).unwrap_or("SIGRT")
}

/// Reads the ring buffer until `shutdown` flips, with housekeeping once a second.
pub async fn run(
    mut pipeline: Pipeline,
    mut reader: RingReader,
    drops: KernelDrops,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = reader.read_batch(|bytes| pipeline.handle(bytes)) => { r?; }
            _ = tick.tick() => {
                // A record that raced the switch back to sleeping waits no longer than this.
                reader.read_now(|bytes| pipeline.handle(bytes));
                pipeline.report_kernel_drops(drops.totals());
                pipeline.tick(Instant::now());
            }
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_status_decoding() {
        assert_eq!(wait_status(3 << 8), (3, "", false));
        assert_eq!(wait_status(9), (0, "SIGKILL", false));
        assert_eq!(wait_status(11 | 0x80), (0, "SIGSEGV", true));
        assert_eq!(signal_name(40), "SIGRT");
    }
}
