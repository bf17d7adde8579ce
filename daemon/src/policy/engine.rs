//! The policy engine: the one owner of the policies in force and of what they put in the
//! kernel. The pipeline tells it what the enrich stage learned (a container's cgroup was
//! born or removed, a process was seen at home) and asks it which rule an event violates;
//! the engine compiles rules into the kernel's maps, arms processes for in-kernel kills, and
//! finds the established connections a tightened rule forbids.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Instant,
};

use sidewall_common::enforce as bits;
use sidewall_proto::v1 as pb;

use super::{
    cut::{self, Cut},
    detect::{self, Violation},
    enforce::{self, Compiled, Enforcer},
    model::Mode,
    parse::Policy,
    protection::{Protection, Protections},
    store::{self, PolicyStore},
};
use crate::{event, identity::Identity, net::netns};

/// Bound on the cgroups whose pod addresses are remembered.
const MAX_POD_ADDRS: usize = 65_536;

/// An established connection a rule forbids: cut (enforce mode), or that enforce mode would
/// cut (monitor mode, left alone).
#[derive(Debug)]
pub struct Forbidden {
    pub cut: Cut,
    pub enforced: bool,
}

impl Forbidden {
    /// The alert action this reports as.
    pub fn action(&self) -> &'static str {
        if self.enforced { "cut" } else { "would_cut" }
    }
}

pub struct PolicyEngine {
    store: Arc<PolicyStore>,
    /// The policies as of `generation`; refreshed when the store moves on.
    snapshot: Vec<Policy>,
    generation: u64,
    /// The kernel's maps; absent when nothing is enforced in the kernel (unit tests, replay).
    enforcer: Option<Enforcer>,
    /// The rule (policy and container rule indices in `snapshot`) that governs each cgroup's
    /// processes; cleared with every new snapshot and every tick (names can arrive later).
    rule_cache: HashMap<u64, Option<(usize, usize)>>,
    /// Cgroups whose connect rules tightened: their established connections are checked.
    tightened: HashSet<u64>,
    /// What monitor-mode rules would put in the kernel, per cgroup, and the cgroups where that
    /// tightened: their established connections are reported as `would_cut`.
    would: HashMap<u64, Compiled>,
    would_tighten: HashSet<u64>,
    /// The pod's own addresses per enforced cgroup, and when they were read.
    pod_addrs: HashMap<u64, (Instant, Vec<[u8; 16]>)>,
    /// How each container's rule got in (runtime hook, cgroup creation, late), for status.
    protections: Arc<Protections>,
}

/// What the runtime hook is told: the rule a container starts under.
#[derive(Debug, Default)]
pub struct Prepared {
    pub policy: String,
    pub rule: String,
    pub mode: &'static str,
    pub flags: u32,
}

impl PolicyEngine {
    pub fn new(store: Arc<PolicyStore>, enforcer: Option<Enforcer>) -> Self {
        Self {
            store,
            snapshot: Vec::new(),
            generation: u64::MAX,
            enforcer,
            rule_cache: HashMap::new(),
            tightened: HashSet::new(),
            would: HashMap::new(),
            would_tighten: HashSet::new(),
            pod_addrs: HashMap::new(),
            protections: Arc::default(),
        }
    }

    /// How each container's rule got in, shared with the status model.
    pub fn protections(&self) -> Arc<Protections> {
        self.protections.clone()
    }

    /// Picks up policy changes: recompiles every known container's rule and finds what the
    /// new rules forbid. Cheap when nothing changed (one atomic load); the pipeline calls it
    /// before each record, so the other calls see the policies in force.
    pub fn refresh(&mut self, ids: &mut Identity) -> Vec<Forbidden> {
        if !self.take_snapshot() {
            return Vec::new();
        }
        self.recompile_known(ids);
        self.sweep(ids)
    }

    /// A container's cgroup was created: it is under its policy before its first process.
    pub fn cgroup_born(&mut self, cgroup: u64, ids: &mut Identity) {
        self.protections.protect(cgroup, Protection::Cgroup);
        self.compile(cgroup, ids);
    }

    /// The runtime hook: a container is being created and waits to start until this returns.
    /// Its rule goes into the kernel now, whatever the daemon has or has not seen of it.
    pub fn prepare(&mut self, cgroup: u64, ids: &mut Identity) -> Prepared {
        self.protections.protect(cgroup, Protection::Hook);
        self.compile(cgroup, ids);
        let w = ids.resolve(cgroup);
        let probe = pb::Process { pod: w.pod.clone(), container: w.container.clone(), ..Default::default() };
        let Some((pol, rule)) = detect::rule_for(&self.snapshot, &probe) else { return Prepared::default() };
        let rule_name = match (&rule.name, rule.role) {
            (Some(n), _) => format!("name={n}"),
            (None, Some(r)) => format!("role={}", r.as_str()),
            (None, None) => String::new(),
        };
        Prepared {
            policy: pol.key(),
            rule: rule_name,
            mode: store::mode_name(pol.spec.mode),
            flags: self.enforcer.as_ref().and_then(|e| e.applied(cgroup)).map_or(0, |c| c.flags),
        }
    }

    pub fn cgroup_gone(&mut self, cgroup: u64) {
        self.protections.forget(cgroup);
        self.pod_addrs.remove(&cgroup);
        self.would.remove(&cgroup);
        self.rule_cache.remove(&cgroup);
        if let Some(e) = self.enforcer.as_mut() {
            e.forget(cgroup);
        }
    }

    /// A process of a container cgroup was seen: a container this engine has not compiled
    /// yet (older than the daemon, or whose mkdir was lost) gets its rule now.
    pub fn container_seen(&mut self, cgroup: u64, ids: &mut Identity) -> Vec<Forbidden> {
        if self.enforcer.as_ref().is_none_or(|e| e.known.contains(&cgroup)) {
            return Vec::new();
        }
        self.protections.protect(cgroup, Protection::Late);
        self.compile(cgroup, ids);
        self.sweep(ids)
    }

    /// The container's own mount namespace: the kernel arms a process that execs into it.
    pub fn set_home(&mut self, cgroup: u64, mnt: u32) {
        if let Some(e) = self.enforcer.as_mut() {
            e.set_home(cgroup, mnt);
        }
    }

    /// A process seen inside its container: the kernel may kill it for what its rule kills.
    pub fn arm(&mut self, pid: u32) {
        if let Some(e) = self.enforcer.as_mut() {
            e.arm(pid);
        }
    }

    /// The violations of `ev` against the rule governing its process's container; a refusal
    /// of the kernel is one even when no detection names it.
    pub fn detect(&mut self, ev: &pb::GetEventsResponse) -> Vec<Violation> {
        use pb::get_events_response::Event;
        if matches!(ev.event, Some(Event::PolicyAlert(_)) | Some(Event::LostEvents(_)) | None) {
            return Vec::new();
        }
        let Some(p) = event::subject(ev) else { return Vec::new() };
        let found =
            self.rule_index(p).map(|(pi, ri)| (&self.snapshot[pi], &self.snapshot[pi].spec.containers[ri]));
        let violations = found.map(|(pol, rule)| detect::check_rule(pol, rule, ev)).unwrap_or_default();
        match detect::refused(ev) {
            Some(what) if violations.is_empty() => vec![detect::refusal(found, what)],
            _ => violations,
        }
    }

    /// The violation behind kills of `p`'s container the kernel counted over its budget
    /// (`kill`: a `refusal::KILL_*`).
    pub fn kernel_kill(&self, p: &pb::Process, kill: u32) -> Violation {
        detect::kernel_kill(detect::rule_for(&self.snapshot, p), kill)
    }

    /// Picks up policy changes and forgets which rule governs which cgroup, compiling
    /// nothing: for an engine without the kernel's maps judging recorded events (replay),
    /// whose cgroup ids may come from several nodes.
    pub fn sync(&mut self) {
        self.take_snapshot();
        self.rule_cache.clear();
    }

    /// The policy governing `p`'s container and its mode, if any.
    pub fn governing(&self, p: &pb::Process) -> Option<(String, &'static str)> {
        detect::rule_for(&self.snapshot, p).map(|(pol, _)| (pol.key(), store::mode_name(pol.spec.mode)))
    }

    /// The first violation of `ev` under any policy (for a connection found established,
    /// whose process may be gone).
    pub fn first_violation(&self, ev: &pb::GetEventsResponse) -> Option<Violation> {
        detect::check(&self.snapshot, ev).into_iter().next()
    }

    /// Once a second: names from the Kubernetes API can arrive after a container started, and
    /// pod addresses after its first process: recompile every known container.
    pub fn tick(&mut self, ids: &mut Identity) -> Vec<Forbidden> {
        self.rule_cache.clear();
        self.take_snapshot();
        self.recompile_known(ids);
        self.sweep(ids)
    }

    /// Takes a new snapshot if the store moved on; returns whether it did.
    fn take_snapshot(&mut self) -> bool {
        let generation = self.store.generation();
        if generation == self.generation {
            return false;
        }
        self.generation = generation;
        self.snapshot = self.store.snapshot();
        self.rule_cache.clear();
        true
    }

    fn rule_index(&mut self, p: &pb::Process) -> Option<(usize, usize)> {
        if let Some(found) = self.rule_cache.get(&p.cgroup_id) {
            return *found;
        }
        let found = detect::rule_index(&self.snapshot, p);
        // A container whose names are not known yet is asked again next time.
        let named = p
            .container
            .as_ref()
            .is_none_or(|c| !c.name.is_empty() && p.pod.as_ref().is_some_and(|pod| !pod.name.is_empty()));
        if named {
            self.rule_cache.insert(p.cgroup_id, found);
        }
        found
    }

    fn recompile_known(&mut self, ids: &mut Identity) {
        let known: Vec<u64> =
            self.enforcer.as_ref().map(|e| e.known.iter().copied().collect()).unwrap_or_default();
        for cgroup in known {
            self.compile(cgroup, ids);
        }
    }

    /// Compiles the rule governing `cgroup`'s container into the kernel's maps (and, for a
    /// monitor-mode rule, what enforce mode would put there).
    fn compile(&mut self, cgroup: u64, ids: &mut Identity) {
        if self.enforcer.is_none() {
            return;
        }
        let w = ids.resolve(cgroup);
        let probe = pb::Process { pod: w.pod.clone(), container: w.container.clone(), ..Default::default() };
        let found = detect::rule_for(&self.snapshot, &probe);
        self.protections.describe(cgroup, &w, &found.map(|(pol, _)| pol.key()).unwrap_or_default());
        let (mut compiled, mut shadow) = match found {
            Some((pol, rule)) => (
                enforce::compile(pol.spec.mode, rule),
                (pol.spec.mode == Mode::Monitor).then(|| enforce::compile(Mode::Enforce, rule)),
            ),
            None => Default::default(),
        };
        // Loopback rules cover the pod's own addresses too (one read serves both).
        let loopback = |c: &Compiled| c.flags & bits::LOOPBACK != 0;
        if loopback(&compiled) || shadow.as_ref().is_some_and(loopback) {
            let local = self.pod_addresses(cgroup, ids);
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
    fn pod_addresses(&mut self, cgroup: u64, ids: &Identity) -> Vec<[u8; 16]> {
        let now = Instant::now();
        if let Some((at, addrs)) = self.pod_addrs.get(&cgroup)
            && now.duration_since(*at) < netns::ADDRS_TTL
        {
            return addrs.clone();
        }
        let Some(pid) = ids.procs_of(cgroup).first().copied() else { return Vec::new() };
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

    /// Cuts the established connections that the rules just compiled forbid; lists those
    /// monitor-mode rules would cut, and leaves them be.
    fn sweep(&mut self, ids: &Identity) -> Vec<Forbidden> {
        let (cgroups, would) = (std::mem::take(&mut self.tightened), std::mem::take(&mut self.would_tighten));
        let mut found = Vec::new();
        if let Some(e) = self.enforcer.as_ref()
            && !cgroups.is_empty()
        {
            let cuts = cut::sweep(ids, &cgroups, |c| e.applied(c), true);
            found.extend(cuts.into_iter().map(|cut| Forbidden { cut, enforced: true }));
        }
        if !would.is_empty() {
            let rules = &self.would;
            let cuts = cut::sweep(ids, &would, |c| rules.get(&c), false);
            found.extend(cuts.into_iter().map(|cut| Forbidden { cut, enforced: false }));
        }
        found
    }
}

/// Whether compiled rules limit where a container may connect (what a sweep checks).
fn limits_destinations(c: &Compiled) -> bool {
    c.flags & (bits::LOOPBACK | bits::EGRESS) != 0
}
