//! decode -> enrich -> detect -> act -> publish on records as the kernel writes them, without
//! root or a kernel: the stages the privileged tests cover end to end, one by one.

use std::{mem::size_of, sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use sidewall_common::{
    CGROUP_PATH_MAX, CgroupEvent, ExecEvent, Header, NamespaceEvent, Namespaces, SockEvent, kind, ns_op,
    sock_op, verdict,
};
use sidewall_proto::v1::{self as pb, get_events_response::Event};

use super::*;
use crate::{
    event::Shared,
    export::{filter::EventFilter, hub::Hub},
    identity::{Identity, Sources, kubernetes::KubeIndex},
    net::Net,
    policy::store::PolicyStore,
    process::ProcessCache,
    stats::{Stage, Stats},
};

const POD_UID: &str = "0b5e4c1a-4f1e-4d36-9f41-1c2a3b4c5d6e";
const WEB_CGROUP: u64 = 1002;
const PROXY_CGROUP: u64 = 1001;
/// The containers' own namespaces, and another mount namespace.
const HOME_MNT: u32 = 4_026_532_001;
const OTHER_MNT: u32 = 4_026_532_099;

fn container_id(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

/// The pod as the API server lists it: `web` and a native sidecar `proxy`.
fn pod() -> Pod {
    let status = |name: &str, c: char| {
        serde_json::json!({"name": name, "image": "busybox", "imageID": "", "ready": true,
            "restartCount": 0, "containerID": format!("containerd://{}", container_id(c))})
    };
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "shop", "uid": POD_UID, "labels": {"app": "web"}},
        "spec": {
            "initContainers": [{"name": "proxy", "image": "busybox", "restartPolicy": "Always"}],
            "containers": [{"name": "web", "image": "busybox"}]
        },
        "status": {"phase": "Running", "qosClass": "Burstable",
            "initContainerStatuses": [status("proxy", 'b')], "containerStatuses": [status("web", 'a')]}
    }))
    .expect("a valid pod")
}

/// The proxy may reach web's 8080 only; a stray connect is blocked in the kernel.
const GUARD: &str = "apiVersion: sidewall.io/v1alpha1
kind: SidecarPolicy
metadata:
  name: guard
spec:
  mode: enforce
  selector:
    namespaces: [shop]
  containers:
    - name: proxy
      loopback:
        connect:
          - container: web
            ports: [8080]
      namespaceChanges: deny
      action: block
";

struct Rig {
    pipeline: Pipeline,
    /// Held so that the hub keeps a subscriber (consumers receive alerts first, so the order
    /// of publication is read from the hub's record of it).
    _rx: crate::export::hub::Receiver,
    hub: Arc<Hub>,
    stats: Arc<Stats>,
}

fn rig(policy: Option<&str>) -> Rig {
    let stats = Arc::new(Stats::default());
    let clock = Clock::new();
    let hub = Arc::new(Hub::new(stats.clone(), "n1".into(), clock));
    let all = EventFilter::compile(&pb::GetEventsRequest::default()).expect("filter");
    let (_sub, rx) = hub.subscribe("test", Stage::SubscriberQueue, all, 1024);
    let kube = Arc::new(KubeIndex::new());
    kube.apply(&pod());
    let identity = Identity::new(Sources { kube: Some(kube), ..Default::default() });
    let cache = ProcessCache::new("n1", clock, Duration::from_secs(5));
    let store = PolicyStore::with_builtin();
    if let Some(p) = policy {
        store.add_document(p, &crate::policy::audit::builtin()).expect("valid policy");
    }
    let enrich = Enricher::new(cache, identity, Net::new(clock));
    let publish = Publisher::new(hub.clone(), stats.clone(), None, clock, "n1".into());
    Rig { pipeline: Pipeline::new(enrich, PolicyEngine::new(store, None), publish), _rx: rx, hub, stats }
}

impl Rig {
    fn feed<T: Copy>(&mut self, record: &T) {
        // SAFETY: records are plain #[repr(C)] data; this reads them as the ring buffer holds them.
        let bytes = unsafe { std::slice::from_raw_parts((record as *const T).cast::<u8>(), size_of::<T>()) };
        self.pipeline.handle(bytes);
    }

    /// What was published since the last call, in order.
    fn events(&mut self) -> Vec<Shared> {
        std::mem::take(&mut *self.hub.published.lock().expect("tap"))
    }
}

fn header(kind: u32, pid: u32, cgroup_id: u64, mnt: u32) -> Header {
    Header {
        kind,
        ktime: 1_000_000 + u64::from(pid),
        pid,
        tid: pid,
        ppid: 1,
        cgroup_id,
        ns: Namespaces {
            mnt,
            net: 4_026_532_010,
            pid: 4_026_532_011,
            user: 4_026_531_837,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn mkdir(id: u64, path: &str) -> CgroupEvent {
    let mut ev = CgroupEvent {
        hdr: header(kind::CGROUP_MKDIR, 1, 1, 0),
        id,
        path_len: path.len() as u32,
        _pad: 0,
        path: [0; CGROUP_PATH_MAX],
    };
    ev.path[..path.len()].copy_from_slice(path.as_bytes());
    ev
}

fn exec(pid: u32, cgroup_id: u64, mnt: u32, binary: &str) -> ExecEvent {
    // SAFETY: an all-zero record is a valid one (empty strings, zero numbers).
    let mut ev: ExecEvent = unsafe { std::mem::zeroed() };
    ev.hdr = header(kind::EXEC, pid, cgroup_id, mnt);
    ev.filename[..binary.len()].copy_from_slice(binary.as_bytes());
    ev.filename_len = binary.len() as u32;
    ev.args[..binary.len()].copy_from_slice(binary.as_bytes());
    ev.args_len = binary.len() as u32 + 1;
    ev
}

fn sock(op: u32, pid: u32, cgroup_id: u64, port: u16, denied: bool) -> SockEvent {
    let mut ev = SockEvent {
        hdr: header(kind::SOCK, pid, cgroup_id, HOME_MNT),
        op,
        family: 2,
        protocol: 6,
        verdict: if denied { verdict::DENIED } else { verdict::ALLOWED },
        cookie: 77 + u64::from(port),
        netns_cookie: 5,
        ..Default::default()
    };
    let lo = [127, 0, 0, 1];
    if op == sock_op::BIND {
        ev.local_addr[..4].copy_from_slice(&lo);
        ev.local_port = port;
    } else {
        ev.remote_addr[..4].copy_from_slice(&lo);
        ev.remote_port = port;
    }
    ev
}

/// web listens on 8080; the proxy is started; both at home in their containers.
fn start_pod(r: &mut Rig) {
    let path = |c: char| format!("/kubepods/burstable/pod{POD_UID}/{}", container_id(c));
    r.feed(&mkdir(WEB_CGROUP, &path('a')));
    r.feed(&mkdir(PROXY_CGROUP, &path('b')));
    r.feed(&exec(100, WEB_CGROUP, HOME_MNT, "/bin/web"));
    r.feed(&sock(sock_op::BIND, 100, WEB_CGROUP, 8080, false));
    r.feed(&exec(200, PROXY_CGROUP, HOME_MNT, "/bin/proxy"));
}

fn kind_of(ev: &Shared) -> &'static str {
    crate::event::kind_name(crate::event::kind(ev))
}

fn alert(ev: &Shared) -> &pb::PolicyAlert {
    match &ev.event {
        Some(Event::PolicyAlert(a)) => a,
        other => panic!("not an alert: {other:?}"),
    }
}

#[test]
fn events_name_their_container_and_pod() {
    let mut r = rig(None);
    start_pod(&mut r);
    let evs = r.events();
    let kinds: Vec<_> = evs.iter().map(kind_of).collect();
    assert_eq!(kinds, ["process_exec", "process_bind", "process_exec"], "{evs:#?}");
    let proxy = crate::event::subject(&evs[2]).expect("a process");
    assert_eq!(proxy.binary, "/bin/proxy");
    assert_eq!(
        proxy.container.as_ref().map(|c| (c.name.as_str(), c.role.as_str())),
        Some(("proxy", "sidecar"))
    );
    assert_eq!(proxy.pod.as_ref().map(|p| (p.namespace.as_str(), p.name.as_str())), Some(("shop", "web-1")));
    assert!(evs.iter().all(|e| e.node_name == "n1" && e.time.is_some()));
}

#[test]
fn an_alert_leaves_right_behind_its_cause() {
    let mut r = rig(Some(GUARD));
    start_pod(&mut r);
    r.feed(&sock(sock_op::CONNECT, 200, PROXY_CGROUP, 9090, true));
    r.feed(&exec(101, WEB_CGROUP, HOME_MNT, "/bin/after"));
    let evs = r.events();
    let kinds: Vec<_> = evs.iter().map(kind_of).collect();
    assert_eq!(
        kinds,
        ["process_exec", "process_bind", "process_exec", "process_connect", "policy_alert", "process_exec"],
        "{evs:#?}"
    );
    let a = alert(&evs[4]);
    assert_eq!(
        (a.rule_id.as_str(), a.action.as_str(), a.policy.as_str()),
        ("loopback-egress", "blocked", "default/guard")
    );
    assert_eq!(a.process.as_ref().map(|p| p.pid), Some(200));
    assert_eq!(a.trigger, pb::EventType::ProcessConnect as i32);
    assert_eq!(a.enforced_by, "kernel", "refused at the cgroup hook");
}

#[test]
fn an_allowed_destination_raises_no_alert() {
    let mut r = rig(Some(GUARD));
    start_pod(&mut r);
    // A UDP connect to the allowed port is reported at once, and judged.
    let mut udp = sock(sock_op::CONNECT, 200, PROXY_CGROUP, 8080, false);
    udp.protocol = 17;
    r.feed(&udp);
    // Nobody listens on UDP 8080: no peer, and still no alarm for a port the rule allows.
    let mut udp = sock(sock_op::CONNECT, 200, PROXY_CGROUP, 9090, false);
    udp.protocol = 17;
    r.feed(&udp);
    let evs = r.events();
    let kinds: Vec<_> = evs.iter().map(kind_of).collect();
    assert_eq!(kinds[3..], ["process_connect", "process_connect", "policy_alert"], "{evs:#?}");
    let a = alert(&evs[5]);
    assert_eq!(a.socket.as_ref().and_then(|s| s.remote.as_ref()).map(|r| r.port), Some(9090));
}

#[test]
fn the_built_in_policy_reports_a_sidecar_leaving_its_namespaces() {
    let mut r = rig(None);
    start_pod(&mut r);
    let before = header(kind::NAMESPACE, 200, PROXY_CGROUP, HOME_MNT).ns;
    let ev = NamespaceEvent {
        hdr: header(kind::NAMESPACE, 200, PROXY_CGROUP, OTHER_MNT),
        before,
        op: ns_op::SETNS,
        ..Default::default()
    };
    r.feed(&ev);
    let evs = r.events();
    let i = evs.iter().position(|e| kind_of(e) == "process_namespace").expect("a namespace event");
    let a = alert(evs.get(i + 1).expect("an alert after it"));
    assert_eq!(
        (a.policy.as_str(), a.action.as_str(), a.mode.as_str()),
        ("sidewall-system/sidecar-zero-trust", "would_kill", "monitor")
    );
    assert_eq!(a.enforced_by, "", "monitor mode does nothing");
}

#[test]
fn a_malformed_record_is_counted_at_decode() {
    let mut r = rig(None);
    r.pipeline.handle(&[kind::EXEC as u8, 0, 0, 0]);
    assert!(r.events().is_empty());
    assert_eq!(r.stats.lost(Stage::Decode), 1);
}

#[test]
fn every_refusal_of_the_kernel_is_heard() {
    // No policy of this daemon covers web (its rules changed since the kernel judged, say):
    // the kernel's refusal is an alert all the same.
    let mut r = rig(None);
    start_pod(&mut r);
    r.feed(&sock(sock_op::CONNECT, 100, WEB_CGROUP, 9090, true));
    let evs = r.events();
    let a = alert(evs.last().expect("events"));
    assert_eq!((a.rule_id.as_str(), a.action.as_str()), ("kernel-refusal", "blocked"), "{evs:#?}");
    assert!(a.message.contains("connect to 127.0.0.1:9090"), "{}", a.message);
}

#[test]
fn refusals_over_budget_become_one_aggregated_alert_of_the_governing_rule() {
    use crate::kernel::alerts::{Aggregate, Drained};
    use std::net::{IpAddr, Ipv4Addr};
    let mut r = rig(Some(GUARD));
    start_pod(&mut r);
    r.events();
    let lo = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let mut overflow = [0; crate::kernel::counters::REFUSALS];
    overflow[sidewall_common::refusal::SEND as usize] = 7;
    r.pipeline.aggregated(Drained {
        aggregates: vec![Aggregate {
            cgroup: PROXY_CGROUP,
            kind: sidewall_common::refusal::CONNECT,
            count: 1000,
            first_ns: 1_000,
            last_ns: 2_000_000_000,
            sample: vec![(lo, 9090), (lo, 9091)],
        }],
        overflow,
    });
    let evs = r.events();
    let kinds: Vec<_> = evs.iter().map(kind_of).collect();
    // Only the alerts: the event each stands for is not published.
    assert_eq!(kinds, ["policy_alert", "policy_alert"], "{evs:#?}");
    let a = alert(&evs[0]);
    assert_eq!(
        (a.rule_id.as_str(), a.action.as_str(), a.policy.as_str(), a.count),
        ("loopback-egress", "blocked", "default/guard", 1000)
    );
    assert_eq!(a.sample, ["127.0.0.1:9090", "127.0.0.1:9091"]);
    let p = a.process.as_ref().expect("the container");
    assert_eq!((p.pid, p.container.as_ref().map(|c| c.name.as_str())), (0, Some("proxy")));
    let (first, last) = (a.first_time.expect("first"), a.last_time.expect("last"));
    assert!((last.seconds, last.nanos) > (first.seconds, first.nanos));
    // The aggregation map was full for 7 sends: counted, without a container.
    let o = alert(&evs[1]);
    assert_eq!((o.rule_id.as_str(), o.action.as_str(), o.count), ("kernel-refusal", "blocked", 7));
}

#[test]
fn kills_over_budget_become_one_aggregated_alert_of_the_rule_that_kills() {
    use crate::kernel::alerts::{Aggregate, Drained};
    let killer = GUARD.replace("action: block", "action: kill");
    let mut r = rig(Some(&killer));
    start_pod(&mut r);
    r.events();
    r.pipeline.aggregated(Drained {
        aggregates: vec![Aggregate {
            cgroup: PROXY_CGROUP,
            kind: sidewall_common::refusal::KILL_NAMESPACE,
            count: 40,
            first_ns: 1_000,
            last_ns: 2_000,
            sample: Vec::new(),
        }],
        overflow: [0; crate::kernel::counters::REFUSALS],
    });
    let evs = r.events();
    assert_eq!(evs.iter().map(kind_of).collect::<Vec<_>>(), ["policy_alert"], "{evs:#?}");
    let a = alert(&evs[0]);
    assert_eq!(
        (a.rule_id.as_str(), a.action.as_str(), a.enforced_by.as_str(), a.policy.as_str(), a.count),
        ("namespace-transition", "killed", "kernel", "default/guard", 40)
    );
    assert_eq!(a.process.as_ref().and_then(|p| p.container.as_ref()).map(|c| c.name.as_str()), Some("proxy"));
}
